"""Geometry of the inline SVG charts (the templates draw it): probability bars with their
thresholds, and a rate over time against a reference line. Plain numbers, no plotting library."""

from __future__ import annotations

from dataclasses import dataclass

BAR_WIDTH = 420  # px of the bar area; a probability of 1 fills it


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    width: float
    threshold: float | None
    threshold_x: float | None
    threshold_label: str | None
    alert: bool  # on the side of its threshold that sets the level (drawn red)


def bar(label: str, value: float, threshold: float | None = None, threshold_label: str | None = None,
        alert_below: bool = False) -> Bar:
    """``alert_below``: the rule fires under the threshold (the confidence floor), not at or above it."""
    value = min(max(float(value), 0.0), 1.0)
    x = None if threshold is None else round(threshold * BAR_WIDTH, 1)
    alert = threshold is not None and ((value < threshold) if alert_below else (value >= threshold))
    return Bar(label, value, round(value * BAR_WIDTH, 1), threshold, x, threshold_label, alert)


@dataclass(frozen=True)
class SeriesChart:
    """A line of (label, rate, n) points scaled into a width x height box, and a reference."""

    width: int
    height: int
    points: list[tuple[float, float, str, float, int]]  # x, y, label, rate, n
    reference_y: float | None
    reference: float | None
    y_max: float
    ticks: list[tuple[float, str]]  # y, label

    @property
    def path(self) -> str:
        return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y, *_) in enumerate(self.points))


def rate_chart(series: list[tuple[str, float, int]], reference: float | None, width: int = 640,
               height: int = 220, pad: int = 40) -> SeriesChart:
    """``series``: (label, rate, n) oldest first; the y axis reaches a little above the largest."""
    top = max([r for _, r, _ in series] + [reference or 0.0, 0.05])
    y_max = min(1.0, round(top * 1.25 + 0.005, 2))
    inner_w, inner_h = width - 2 * pad, height - 2 * pad

    def y_of(rate: float) -> float:
        return pad + inner_h * (1 - rate / y_max)

    step = inner_w / max(1, len(series) - 1)
    points = [(pad + (i * step if len(series) > 1 else inner_w / 2), y_of(rate), label, rate, n)
              for i, (label, rate, n) in enumerate(series)]
    ticks = [(y_of(y_max * k / 4), f"{100 * y_max * k / 4:.0f} %") for k in range(5)]
    return SeriesChart(width, height, points, None if reference is None else y_of(reference), reference,
                       y_max, ticks)
