"""Training and evaluation: config, parameter groups and schedules, the loop, checkpoints, DDP.

    from twogpu_alexnet.analysis.epoch_hooks import epoch_hooks
    from twogpu_alexnet.engine.config import load_config
    from twogpu_alexnet.engine.train import train
    from twogpu_alexnet.engine.evaluate import evaluate
    config = load_config("configs/paper-2gpu.toml", ["data.root=/data/imagenet"])
    result = train(config, "runs/paper", hooks=epoch_hooks(config))  # colour scores, kernel grids
    print(evaluate(["runs/paper/checkpoints/best.pt"], "/data/imagenet/val", ten_crop=True))

See docs/training.md for every config key, the run folder, checkpoints and exit codes.
"""
