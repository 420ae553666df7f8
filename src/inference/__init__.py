"""Inference: the ``InferenceNet`` graph, the ``Detector`` APIs, and MINDIR export."""
from src.inference.detector import BatchDetector, Detector
from src.inference.exported import ExportedDetector

__all__ = ["BatchDetector", "Detector", "ExportedDetector"]
