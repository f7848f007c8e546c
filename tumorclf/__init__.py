"""tumorclf: brain-MRI Healthy/Tumor classification with Keras 3 (`tumorclf --help`)."""

import sys

if sys.argv[:1] == ["-m"]:
    # `python -m tumorclf.<module>` (argv[0] is "-m" while the package is imported): the module imports
    # TensorFlow before it reaches the CLI, so silence TensorFlow's C++ start-up notices here, as the CLI does.
    from tumorclf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
