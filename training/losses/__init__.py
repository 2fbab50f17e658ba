"""Training objectives: reconstruction, perceptual, adversarial and the statistical terms."""
