"""Image-oriented classes: crops, the crop classifier, taxonomy learning, label confidence."""
