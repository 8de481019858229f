"""Small Qt controls of the dock widget (no napari imports)."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QSlider, QWidget


class FloatSlider(QWidget):
    """A slider with a spin box showing (and accepting) the exact value."""

    valueChanged = Signal(float)

    def __init__(self, minimum: float, maximum: float, step: float, value: float,
                 decimals: int = 2, suffix: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._min, self._step = float(minimum), float(step)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, int(round((maximum - minimum) / step)))
        self.spin = QDoubleSpinBox()
        self.spin.setRange(minimum, maximum)
        self.spin.setSingleStep(step)
        self.spin.setDecimals(decimals)
        self.spin.setSuffix(suffix)
        self.spin.setKeyboardTracking(False)  # typing "0.35" is one change, not three
        self.spin.setMinimumWidth(90)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)
        self.slider.valueChanged.connect(self._from_slider)
        self.spin.valueChanged.connect(self._from_spin)
        self.setValue(value)

    def value(self) -> float:
        return float(self.spin.value())

    def setValue(self, value: float) -> None:  # noqa: N802 - Qt naming
        self.spin.setValue(float(value))

    def _from_slider(self, ticks: int) -> None:
        value = self._min + ticks * self._step
        if abs(value - self.spin.value()) > self._step / 2:
            self.spin.setValue(value)

    def _from_spin(self, value: float) -> None:
        ticks = int(round((value - self._min) / self._step))
        if ticks != self.slider.value():
            self.slider.blockSignals(True)
            self.slider.setValue(ticks)
            self.slider.blockSignals(False)
        self.valueChanged.emit(float(value))
