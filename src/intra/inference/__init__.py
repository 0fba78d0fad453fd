"""Inference: the Detector, the engine that runs the network on every planned window, its backends, calibration."""
