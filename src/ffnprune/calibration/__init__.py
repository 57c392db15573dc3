"""Calibration for one-shot pruning: the tokens, and the layer-by-layer pass that collects each layer's
statistics with the layers before it already pruned."""

from ffnprune.calibration.data import CalibrationData, calibration_data, check_calibration_file
from ffnprune.calibration.sequential import LayerStatistics, SequentialCalibration

__all__ = ["CalibrationData", "LayerStatistics", "SequentialCalibration", "calibration_data",
           "check_calibration_file"]
