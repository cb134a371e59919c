"""ROC and calibration curves as PNG line plots (matplotlib, Agg backend: no display needed),
drawn the same way as the audit digest's plots (include/audit/digest.py), and the metrics table
stored next to them."""

from __future__ import annotations

import io

SIZE_INCHES, DPI = 4, 80  # a 320 x 320 pixel image


def line_plot_png(x, y, *, title: str, xlabel: str, ylabel: str) -> bytes:
    """A PNG of the curve (x, y) in the unit square with a grey diagonal (chance for ROC,
    perfect calibration), a title and both axis labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(SIZE_INCHES, SIZE_INCHES), dpi=DPI)
    try:
        ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle="--")
        ax.plot(x, y, linewidth=2)
        ax.set(xlim=(0, 1), ylim=(0, 1), title=title, xlabel=xlabel, ylabel=ylabel)
        fig.subplots_adjust(left=0.17, right=0.95, bottom=0.15, top=0.9)  # fixed: text never moves the curve
        out = io.BytesIO()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out.getvalue()


def evaluation_plots(version: int, metrics: dict) -> dict[str, bytes]:
    """A version's ROC and calibration plots (PNG) from its evaluation metrics."""
    calibration = metrics["calibration"]
    return {
        "roc": line_plot_png(
            metrics["roc"]["x"],
            metrics["roc"]["y"],
            title=f"ROC v{version} (AUC {metrics['auc']:.3f})",
            xlabel="False positive rate",
            ylabel="True positive rate",
        ),
        "calibration": line_plot_png(
            calibration["predicted"],
            calibration["observed"],
            title=f"Calibration v{version} (error {metrics['calibration_error']:.3f})",
            xlabel="Predicted probability",
            ylabel="Observed redemption rate",
        ),
    }


def report_markdown(version: int, metrics: dict, decision: str) -> str:
    """The metrics table stored next to the plots."""
    rows = [
        ("ROC AUC", metrics["auc"]),
        ("log loss", metrics["log_loss"]),
        ("Brier score", metrics["brier"]),
        ("calibration error", metrics.get("calibration_error")),
        ("prediction std", metrics["prediction_std"]),
        ("validation rows", metrics["rows"]),
        ("positive rate", metrics["positive_rate"]),
        ("policy ROI (cents/impression)", metrics.get("policy_roi_cents_per_impression")),
    ]
    table = "\n".join(
        f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in rows
    )
    return (
        f"# offer model v{version}\n\n| metric | value |\n| --- | --- |\n{table}\n\n"
        f"Decision: {decision}\n\n![ROC](roc.png) ![calibration](calibration.png)\n"
    )
