"""The architecture map: names what exists, lights every notebook's part, and its labels stay inside their boxes."""

from __future__ import annotations

import re

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from helpers import REPO  # noqa: E402

from bagel_lite.workbook.architecture import ARROWS, BOXES, PARTS, draw_map, lit_boxes, you_are_here  # noqa: E402


def test_every_module_and_notebook_named_on_the_map_exists():
    notebooks = {p.name.split("_")[0] for p in (REPO / "notebooks").glob("*.ipynb")}
    for box in BOXES:
        for module in re.split(r"[,\s]+", box.module.strip()):
            if module:
                assert (REPO / "bagel_lite" / module).exists(), (box.key, module)
        for nb in re.split(r",\s*", box.notebooks):
            assert nb in notebooks, (box.key, nb)
    assert {nb for nb, _ in PARTS.values()} <= notebooks


def test_every_part_lights_something_and_tour_lights_all():
    keys = {b.key for b in BOXES}
    for part in PARTS:
        assert lit_boxes(part), part
    assert lit_boxes("tour") == lit_boxes(None) == keys
    assert lit_boxes("mot") == {"mot", "und_expert", "attention", "gen_expert"}
    assert {a for a, *_ in ARROWS} | {b for _, b, *_ in ARROWS} <= keys
    with pytest.raises(ValueError, match="unknown part"):
        you_are_here("nonsense")


def _inside(inner, outer, slack: float = 1.0) -> bool:
    return (inner.x0 >= outer.x0 - slack and inner.x1 <= outer.x1 + slack
            and inner.y0 >= outer.y0 - slack and inner.y1 <= outer.y1 + slack)


@pytest.mark.parametrize("compact", [False, True])
def test_labels_stay_inside_their_boxes_and_do_not_overlap(compact):
    if compact:
        you_are_here("tour")  # the small map at its own font size
        fig = plt.gcf()
    else:
        fig = draw_map()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    edges = {p.get_gid(): p.get_window_extent(renderer) for p in ax.patches if p.get_gid()}
    texts = [t for t in ax.texts if t.get_gid()]
    assert len(edges) == len(BOXES) and {t.get_gid() for t in texts} == set(edges)
    for t in texts:
        assert _inside(t.get_window_extent(renderer), edges[t.get_gid()]), (t.get_gid(), t.get_text())
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    plt.close(fig)


def test_you_are_here_highlights_only_its_part():
    fig, ax = plt.subplots()
    you_are_here("sampler", ax=ax)
    widths = {p.get_gid(): p.get_linewidth() for p in ax.patches if p.get_gid()}
    thick = {k for k, w in widths.items() if w > 2}
    assert thick == lit_boxes("sampler") and "sampler" in thick and "lm_head" not in thick
    assert "notebook 06" in ax.get_title(loc="left")
    plt.close(fig)


def test_the_command_writes_the_png_it_is_given_and_helps_without_writing(tmp_path, monkeypatch, capsys):
    import pytest

    from bagel_lite.workbook.architecture import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "PNG" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["map.pdf"])
    assert "not a .png" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither call wrote a file
    main(["map.png"])
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
