"""Looking inside trained networks: conv1 colour specificity per tower (Figure 3), fc7 nearest
neighbours (Figure 4), and a run's report page."""
