"""Input gradients of stride-1 'same' convolutions as forward convolutions, on CPU.

TensorFlow's CPU kernel for a convolution's input gradient (Conv2DBackpropInput) is much slower than a forward
convolution of the same size, although for stride 1, 'same' padding and an odd kernel the input gradient *is* a
forward convolution: of the upstream gradient with the kernel flipped in space and its channels swapped. On this
2-core machine, for VGG16's 3x3 convolutions with 512 channels, it took 2.3x the forward convolution at 8x8 and
14x14 (128 and 224 px inputs) and 6.5x at 2x2; a fast-recipe training step (block5 and head, batch 32) took 12%
less time at 128 px and 38% less at 224 px with the forward form (`tests/test_conv_gradient.py` checks that the
gradients are TensorFlow's own). Only the computation of the gradient changes: the layers stay Keras' Conv2D, so
saved models, exports and Grad-CAM see the same model. GPUs have fast input-gradient kernels: left as they are.

Training uses it (`compile_model(forward_input_gradients=True)`, the default); `tumorclf bench
--conv-input-gradient tensorflow|forward` measures either form.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@tf.custom_gradient
def same_convolution(inputs: tf.Tensor, kernel: tf.Tensor):
    """`tf.nn.conv2d(inputs, kernel, 1, "SAME")` (NHWC, odd kernel) whose input gradient is a forward
    convolution; its kernel gradient is TensorFlow's own."""

    def gradient(upstream):
        flipped = tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])
        return (tf.nn.conv2d(upstream, flipped, 1, "SAME"),
                tf.raw_ops.Conv2DBackpropFilter(input=inputs, filter_sizes=tf.shape(kernel), out_backprop=upstream,
                                                strides=[1, 1, 1, 1], padding="SAME"))

    return tf.nn.conv2d(inputs, kernel, 1, "SAME"), gradient


def eligible(layer: keras.layers.Layer) -> bool:
    """A Conv2D whose input gradient is a forward convolution: stride 1, no dilation, one group, 'same'
    padding, channels last, an odd kernel."""
    return (isinstance(layer, keras.layers.Conv2D) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1 and layer.padding == "same"
            and layer.data_format == "channels_last" and all(size % 2 for size in layer.kernel_size))


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` and of the models nested in it."""
    found = []
    for layer in model.layers:
        found += _layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def use_forward_input_gradients(model: keras.Model) -> int:
    """Give every `eligible` convolution of `model` (nested models included) the forward-convolution input
    gradient, when no GPU is visible; returns how many. The layers' configuration and weights are unchanged."""
    if tf.config.list_physical_devices("GPU"):
        return 0
    layers = [layer for layer in _layers(model) if eligible(layer)]
    for layer in layers:
        layer.convolution_op = lambda inputs, kernel: same_convolution(inputs, tf.convert_to_tensor(kernel))
    return len(layers)
