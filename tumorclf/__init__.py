"""tumorclf: brain-MRI Healthy/Tumor classification with Keras 3 (`tumorclf --help`)."""
