"""What `tumorclf.explain.gradcam` can explain with, in a module that loads neither TensorFlow nor
tf-keras-vis: ``tumorclf explain --help`` lists these choices at once."""

from __future__ import annotations

METHODS = ("gradcam", "gradcam++", "scorecam")  # tf-keras-vis's Gradcam, GradcamPlusPlus and Scorecam
BOX_METHODS = ("gradcam", "gradcam++")  # scored against boxes by default (scorecam: 16 passes an image)
TARGETS = ("predicted", "tumor", "healthy")  # the class whose evidence is shown: the run's decision, or a fixed one
