"""The prediction browser: a checkpoint's masks over each image of a split, in JupyterLab.

:class:`PredictionBrowser` is the ipywidgets UI over one or more :class:`skinseg.predict.collect.PredictionSet`;
:func:`browse` collects the sets (:func:`skinseg.predict.collect.collect_predictions`) and opens the browser.
"""
from __future__ import annotations

import html
from pathlib import Path

import cv2
import numpy as np

from skinseg.data.isic import ATTRIBUTES
from skinseg.overlay import ATTRIBUTE_COLOURS, compare_overlay, legend_html
from skinseg.predict.collect import PredictionSet, collect_predictions

VIEWS = {"ground truth": "truth", "prediction": "prediction", "both": "both"}
VIEW_NOTES = {"truth": "filled: ground truth", "prediction": "filled: prediction",
              "both": "filled: ground truth, outline: prediction"}


def overlay_png(pset: PredictionSet, index: int, mode: str = "both", alpha: float = 0.45, attributes=None,
                size: int = 384) -> bytes:
    """PNG of one image with its masks, resized to ``size`` px (masks by nearest neighbour, so edges stay crisp)."""
    image, pred = pset.images[index], pset.pred[index]
    truth = pset.truth[index] if pset.truth is not None else None
    if image.shape[0] != size:
        interp = cv2.INTER_LINEAR if size > image.shape[0] else cv2.INTER_AREA
        image = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interp)

        def scale(m):
            return cv2.resize(m.astype(np.uint8).transpose(1, 2, 0), (size, size),
                              interpolation=cv2.INTER_NEAREST).reshape(size, size, -1).transpose(2, 0, 1)

        pred = scale(pred)
        truth = scale(truth) if truth is not None else None
    drawn = compare_overlay(image, truth, pred, mode, alpha, attributes, thickness=max(1, size // 192))
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(drawn[..., ::-1]))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def scores_html(pset: PredictionSet, index: int) -> str:
    """A small table of one image: per attribute, pixel share in truth and prediction, and Jaccard."""
    def share(masks):
        return "—" if masks is None else f"{100 * masks[index, c].mean():.1f}%"

    row = pset.scores.loc[pset.ids[index]] if pset.scores is not None and pset.ids[index] in pset.scores.index \
        else None
    cells = []
    for c, a in enumerate(ATTRIBUTES):
        r, g, b = ATTRIBUTE_COLOURS[c]
        jac = "—" if row is None else f"{row[a]:.3f}"
        cells.append(f'<tr><td><span style="color:rgb({r},{g},{b})">&#9632;</span> {html.escape(a)}</td>'
                     f"<td>{share(pset.truth)}</td><td>{share(pset.pred)}</td><td>{jac}</td></tr>")
    mean = "—" if row is None else f"{row['mean_jaccard']:.3f}"
    cells.append(f"<tr><td><b>mean</b></td><td></td><td></td><td><b>{mean}</b></td></tr>")
    head = "<tr><th>attribute</th><th>truth</th><th>prediction</th><th>Jaccard</th></tr>"
    style = "<style>.skinseg-scores td, .skinseg-scores th {padding: 1px 8px; text-align: left}</style>"
    return (f'{style}<table class="skinseg-scores" style="font-size:12px;border-collapse:collapse">'
            f"{head}{''.join(cells)}</table><div style='font-size:11px;color:#666'>pixel share at cache "
            "resolution; Jaccard at original resolution (1 when both masks are empty)</div>")


class PredictionBrowser:
    """ipywidgets UI to page through predictions: split, image (slider, id, previous/next), view, opacity,
    attributes shown, sort order and filter; the overlay, a legend and the image's scores.

    Args:
        sets: one :class:`PredictionSet` or split name -> set.
        size: display size in pixels of the (square) overlay.
        alpha: initial opacity.

    The controls are attributes (``split``, ``slider``, ``id_dropdown``, ``prev_button``, ``next_button``, ``view``,
    ``opacity``, ``attribute_boxes``, ``sort``, ``filter``, ``first_n``, ``image``, ``legend``, ``table``,
    ``status``), so tests and notebooks can drive them; ``widget`` is the whole UI.
    """

    def __init__(self, sets: dict[str, PredictionSet] | PredictionSet, size: int = 384, alpha: float = 0.45):
        import ipywidgets as w

        self.sets = {sets.split: sets} if isinstance(sets, PredictionSet) else dict(sets)
        if not self.sets:
            raise ValueError("no prediction sets to browse; build them with collect_predictions()")
        self.size = size
        self.order = np.zeros(0, dtype=np.int64)  # positions in the current set, in display order
        self._busy = False

        self.split = w.Dropdown(options=list(self.sets), description="split")
        self.sort = w.Dropdown(description="sort")
        filters = [("all images", "all")] + [(f"with {a} (truth or prediction)", a) for a in ATTRIBUTES]
        self.filter = w.Dropdown(options=filters, value="all", description="filter")
        self.first_n = w.BoundedIntText(value=0, min=0, max=10**6, description="first N",
                                        tooltip="show only the first N images in this order; 0 = all",
                                        layout=w.Layout(width="150px"))
        self.prev_button = w.Button(description="Previous", icon="arrow-left", layout=w.Layout(width="110px"))
        self.next_button = w.Button(description="Next", icon="arrow-right", layout=w.Layout(width="110px"))
        # no readout: positions are 0-based, the status line says "k of n"
        self.slider = w.IntSlider(min=0, max=0, description="image", continuous_update=True, readout=False,
                                  layout=w.Layout(width="380px"))
        self.id_dropdown = w.Dropdown(description="id")
        self.view = w.ToggleButtons(options=list(VIEWS), value="both")
        self.opacity = w.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity")
        self.attribute_boxes = {a: w.Checkbox(value=True, description=a, indent=False,
                                              layout=w.Layout(width="auto", margin="0 12px 0 0"))
                                for a in ATTRIBUTES}
        self.image = w.Image(format="png", width=size, height=size)
        self.legend = w.HTML()
        self.table = w.HTML()
        self.status = w.HTML()
        for widget, name in ((self.slider, "slider"), (self.image, "image"), (self.next_button, "next"),
                             (self.prev_button, "prev"), (self.id_dropdown, "id")):
            widget.add_class(f"skinseg-{name}")

        self.split.observe(lambda _: self._load_split(), "value")
        self.sort.observe(lambda _: self._reorder(keep=None), "value")  # a new order starts at its top
        for control in (self.filter, self.first_n):
            control.observe(lambda _: self._reorder(keep=self.image_id), "value")
        self.slider.observe(self._on_slider, "value")
        self.id_dropdown.observe(self._on_id, "value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        for control in (self.view, self.opacity, *self.attribute_boxes.values()):
            control.observe(lambda _: self._render(), "value")

        self.widget = w.VBox([
            w.HBox([self.split, self.sort, self.filter, self.first_n]),
            w.HBox([self.prev_button, self.slider, self.next_button, self.id_dropdown]),
            w.HBox([self.view, self.opacity]),
            w.HBox(list(self.attribute_boxes.values())),
            w.HBox([self.image, w.VBox([self.status, self.legend, self.table], layout=w.Layout(margin="0 0 0 16px"))]),
        ])
        self._load_split()

    # ---- state ----------------------------------------------------------------------
    @property
    def current(self) -> PredictionSet:
        return self.sets[self.split.value]

    @property
    def index(self) -> int | None:
        """Row of the shown image in the current set (None when the filter leaves no image)."""
        return int(self.order[self.slider.value]) if len(self.order) else None

    @property
    def image_id(self) -> str | None:
        return None if self.index is None else self.current.ids[self.index]

    @property
    def shown_attributes(self) -> list[int]:
        return [c for c, a in enumerate(ATTRIBUTES) if self.attribute_boxes[a].value]

    @property
    def mode(self) -> str:
        return VIEWS[self.view.value]

    def step(self, delta: int) -> None:
        """Move ``delta`` images along the current order, stopping at either end."""
        if len(self.order):
            self.slider.value = int(np.clip(self.slider.value + delta, 0, len(self.order) - 1))

    def sorted_positions(self) -> np.ndarray:
        """Rows of the current set in the chosen order, filtered, cut to the first N."""
        pset, key = self.current, self.sort.value
        order = np.arange(len(pset))
        if key != "id" and pset.scores is not None:
            values = pset.scores.reindex(pset.ids)[key].to_numpy(dtype=float)
            order = np.argsort(values, kind="stable")  # worst (lowest) first, ties by id; unscored last
        else:
            order = np.argsort(np.asarray(pset.ids), kind="stable")
        if self.filter.value != "all":
            present = pset.present()[:, ATTRIBUTES.index(self.filter.value)]
            order = order[present[order]]
        if self.first_n.value > 0:
            order = order[: self.first_n.value]
        return order

    # ---- reactions ------------------------------------------------------------------
    def _load_split(self) -> None:
        pset = self.current
        self._busy = True
        try:
            views = list(VIEWS) if pset.has_truth else ["prediction"]
            previous = self.view.value
            self.view.options = views
            self.view.value = previous if previous in views else views[-1]
            self.view.tooltips = [] if pset.has_truth else ["this split has no ground truth"]
            sorts = [("id", "id")]
            if pset.scores is not None:
                sorts += [("worst first (mean Jaccard)", "mean_jaccard")]
                sorts += [(f"worst first ({a})", a) for a in ATTRIBUTES]
            previous = self.sort.value
            self.sort.options = sorts
            self.sort.value = previous if previous in dict(sorts).values() else "id"
            self.sort.disabled = pset.scores is None
        finally:
            self._busy = False
        self._reorder(keep=None)

    def _reorder(self, keep: str | None) -> None:
        if self._busy:
            return
        pset = self.current
        self.order = self.sorted_positions()
        ids = [pset.ids[i] for i in self.order]
        position = ids.index(keep) if keep in ids else 0
        self._busy = True
        try:
            self.slider.value = 0
            self.slider.max = max(len(ids) - 1, 0)
            self.slider.value = position
            self.slider.disabled = len(ids) <= 1
            self.id_dropdown.options = ids
            self.id_dropdown.value = ids[position] if ids else None
        finally:
            self._busy = False
        self._render()

    def _on_slider(self, change) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self.id_dropdown.value = self.image_id
        finally:
            self._busy = False
        self._render()

    def _on_id(self, change) -> None:
        if self._busy or change["new"] is None:
            return
        ids = [self.current.ids[i] for i in self.order]
        self.slider.value = ids.index(change["new"])

    def _render(self) -> None:
        if self._busy:
            return
        pset, n = self.current, len(self.order)
        self.prev_button.disabled = n == 0 or self.slider.value == 0
        self.next_button.disabled = n == 0 or self.slider.value >= n - 1
        self.legend.value = legend_html(note=VIEW_NOTES[self.mode])
        if self.index is None:
            self.image.value = b""
            self.table.value = ""
            self.status.value = f"<b>{html.escape(pset.split)}</b>: no image matches the filter"
            return
        i = self.index
        self.image.value = overlay_png(pset, i, self.mode, self.opacity.value, self.shown_attributes, self.size)
        self.table.value = scores_html(pset, i)
        truth = "" if pset.has_truth else " (no ground truth)"
        self.status.value = (f"<b>{html.escape(pset.ids[i])}</b> — {self.slider.value + 1} of {n} in "
                             f"{html.escape(pset.split)}{truth}")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def browse(checkpoint: str | Path, data_root: str | Path, splits=("val",), tta: str | None = None,
           limit: int | None = None, device: str = "auto", size: int = 384) -> PredictionBrowser:
    """Collect a checkpoint's predictions on ``splits`` and return a browser over them (display it in a cell)."""
    if isinstance(splits, str):
        splits = (splits,)
    sets = {s: collect_predictions(checkpoint, data_root, s, tta=tta, limit=limit, device=device) for s in splits}
    return PredictionBrowser(sets, size=size)
