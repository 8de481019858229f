"""Small Qt controls of the dock widget, and the controls built from a detector's
parameter schema (no napari imports)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QSlider, QWidget


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
        self.spin.setKeyboardTracking(False)  # typing "0.35" is one change, not three
        self.spin.setMinimumWidth(self.spin.fontMetrics().horizontalAdvance(
            f"{maximum:.{decimals}f}") + 60)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)
        # The unit is a label of its own: as a spin-box suffix, napari's stylesheet
        # (buttons on both sides, larger font) clipped "16.0 µm" to "16.0 µn".
        self.unit = QLabel(suffix.strip())
        self.unit.setMinimumWidth(self.unit.fontMetrics().horizontalAdvance("µm²") + 6)
        layout.addWidget(self.unit)
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


class ChoiceCombo(QComboBox):
    """A combo box over a parameter's fixed choices (numbers or names), with the
    FloatSlider interface."""

    valueChanged = Signal(object)  # the choice: an int, or a str for named choices

    def __init__(self, choices: tuple[int | str, ...], value: float | str,
                 label: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        for c in choices:
            self.addItem(label(c) if label else str(c), c)
        self.setValue(value)
        self.currentIndexChanged.connect(lambda _i: self.valueChanged.emit(self.value()))

    def value(self) -> float | str:
        return self.currentData()

    def setValue(self, value: float | str) -> None:  # noqa: N802 - Qt naming
        index = self.findData(value if isinstance(value, str) else int(value))
        if index >= 0:
            self.setCurrentIndex(index)


def control_for(param: Any) -> QWidget:
    """The control of one schema `Param`: a combo for fixed choices, else a slider with
    a spin box; its tooltip is the parameter's help and range."""
    unit = f" {param.unit}" if param.unit else ""
    if param.choices:
        label = (lambda a: f"α = {a}  (a value every {32 // a} model px)") \
            if param.key == "alpha" else None
        control: QWidget = ChoiceCombo(param.choices, param.default, label)
    else:
        control = FloatSlider(param.minimum, param.maximum, param.step, param.default,
                              decimals=param.decimals, suffix=unit)
    control.setToolTip(f"{param.help} ({param.describe_range()})")
    control.setObjectName(param.key)
    return control
