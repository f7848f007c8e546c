"""The formats an export can hold beside model.keras, apart from `tumorclf.serving.export` (which loads
TensorFlow) because `tumorclf export --help` lists them."""

FORMATS = ("savedmodel", "onnx")  # in the order they are exported and listed in the model card
DEFAULT_FORMATS = ("savedmodel",)
