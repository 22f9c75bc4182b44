"""The paper-style table of a preset: per layer and tower, shapes, kernels, parameters, device."""
from __future__ import annotations

from ..spec import Conv, get_spec, layer_shapes


def summarize(preset="paper", num_classes: int | None = None, devices=("cuda:0", "cuda:1")) -> dict:
    """Rows for ``info``: parameters are counted on the real module (built on the meta device): two-tower,
    or for a one-tower preset the single column (tower 0 on ``devices[0]``)."""
    from . import build_model

    spec = get_spec(preset, num_classes)
    if spec.towers == 2:
        model = build_model(spec, mode="two-tower", devices=("meta", "meta"))
    else:
        model = build_model(spec, mode="grouped", device="meta")
    counts: dict[tuple, int] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = (parts[-2], int(parts[1]) if parts[0] == "towers" else None)
        if spec.towers == 1 and parts[0] != spec.head.name:
            key = (parts[0], 0)
        counts[key] = counts.get(key, 0) + p.numel()
    rows = []
    for shape in layer_shapes(spec):
        layer = spec.layer(shape.name)
        towers = (None,) if shape.name == spec.head.name else tuple(range(spec.towers))
        for tower in towers:
            row = {
                "name": shape.name,
                "tower": tower,
                "device": str(devices[0] if tower is None else devices[tower]),
                "reads": shape.reads,
                "params": counts[(shape.name, tower)],
            }
            if isinstance(layer, Conv):
                row.update(
                    kernels=shape.out_channels,
                    kernel=[layer.kernel, layer.kernel, shape.in_channels],
                    stride=layer.stride,
                    padding="cover" if layer.cover else layer.padding,
                    input=[shape.in_channels, shape.in_size, shape.in_size],
                    output=[shape.out_channels, shape.conv_size, shape.conv_size],
                    ops=list(layer.ops),
                    next_input=[shape.out_channels, shape.out_size, shape.out_size],
                )
            else:
                row.update(kernels=shape.out_channels, input=[shape.in_channels], output=[shape.out_channels],
                           ops=["relu", f"dropout {layer.dropout} ({spec.dropout_form})"] if tower is not None
                           else ["softmax"])
            rows.append(row)
    return {
        "preset": spec.name,
        "description": spec.description,
        "input": [spec.in_channels, spec.input_size, spec.input_size],
        "num_classes": spec.num_classes,
        "towers": spec.towers,
        "total_params": sum(counts.values()),
        "layers": rows,
    }
