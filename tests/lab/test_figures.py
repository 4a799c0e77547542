"""Lab figures fit the report's page width: Context.save_figure refuses wider ones."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from blocklab.lab.base import MAX_FIGURE_INCHES, Context  # noqa: E402


def test_limit_is_the_page_width_at_the_saved_dpi() -> None:
    assert MAX_FIGURE_INCHES * 110 == 1100


def test_save_figure_accepts_a_figure_at_the_limit(tmp_path) -> None:
    ctx = Context(out_dir=tmp_path)
    fig, ax = plt.subplots(figsize=(MAX_FIGURE_INCHES, 4))
    ax.plot([0, 1], [0, 1])
    rel = ctx.save_figure(fig, "fits")
    assert rel == "figures/fits.png"
    assert (tmp_path / rel).stat().st_size > 1000
    assert not plt.fignum_exists(fig.number)  # closed


def test_save_figure_refuses_a_wider_figure_and_closes_it(tmp_path) -> None:
    ctx = Context(out_dir=tmp_path)
    fig, _ = plt.subplots(figsize=(11, 4))
    with pytest.raises(ValueError, match=r"'too_wide'.*11 inches.*MAX_FIGURE_INCHES \(10\)"):
        ctx.save_figure(fig, "too_wide")
    assert not plt.fignum_exists(fig.number)
    assert not (tmp_path / "figures" / "too_wide.png").exists()
