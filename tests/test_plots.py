"""The Recall@K plot: validation points over steps, the test result marked apart."""

import pytest

from make_hf.training import plots


@pytest.fixture
def drawn(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_test_result_is_marked_apart_from_the_validation_curve(drawn, tmp_path):
    validation = [{"step": 100, "recall@10": 0.5}, {"step": 200, "recall@10": 0.7}]
    plots.plot_recall(validation, str(tmp_path / "r.png"), test={"step": 300, "recall@10": 0.6})
    lines = {line.get_label(): line for line in drawn[0].axes[0].lines}
    assert list(lines["validation recall@10"].get_xdata()) == [100, 200]
    assert lines["validation recall@10"].get_linestyle() == "-"
    assert list(lines["test recall@10 0.600"].get_xdata()) == [300]
    assert lines["test recall@10 0.600"].get_linestyle() == "None"
    assert "validation" in drawn[0].axes[0].get_title() and "test" in drawn[0].axes[0].get_title()


def test_a_single_validation_point_is_a_marker_not_a_line(drawn, tmp_path):
    plots.plot_recall([{"step": 2, "recall@1": 0.2}], str(tmp_path / "r.png"), test={"step": 3, "recall@1": 0.3})
    validation = next(line for line in drawn[0].axes[0].lines if line.get_label() == "validation recall@1")
    assert validation.get_linestyle() == "None" and validation.get_marker() == "o"
