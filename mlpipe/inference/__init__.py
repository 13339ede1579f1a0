"""Classifying a user's image files with a trained model: images, model source, classify."""
