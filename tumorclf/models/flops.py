"""How much arithmetic a model does per image: the measure behind every efficiency the project reports."""

from __future__ import annotations


def forward_flops(model) -> int:
    """Multiply-adds x 2 of the conv and dense layers for one image (other layers are negligible)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            in_channels = layer.input.shape[-1] // layer.groups
            total += 2 * height * width * kh * kw * in_channels * out_channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return int(total)
