"""``SolverDashboard``: watch and steer a running :class:`~cryonb.sagd.SAGDSolver` or
:class:`~cryonb.abinitio.AbInitioRun` from the notebook.

The dashboard attaches through the solver's (or job's) ``callback``, runs the work in a
background thread (so the kernel keeps answering the notebook) and updates a
:class:`SolverMonitor` (traitlets) after every iteration; the labels are linked to it.  The
pictures (:func:`cryonb.viz.solver_history_figure`, :func:`cryonb.viz.volume_slices_figure` of
the current map, and the panels of :mod:`cryonb.widgets.dashboard_panels`: the map's
iso-surface, a strip of snapshots against solver time, the half-set FSC in Å once the halves
run, the fraction of points evaluated per domain, and the budget's ETA) are redrawn at most
every ``redraw_interval_s`` seconds, by a second thread from a copy of the map taken between
two iterations.

The status line reads "running" while records arrive, also when the work runs in the
foreground (``solver.run()`` / ``run.run()`` in the cell); :meth:`SolverDashboardView.run`
runs it in the foreground and ends with "finished" (or "stopped", "error") and the ETA
replaced by what the run used.  A bare solver that stops in the foreground shows "finished"
with its stop reason at its last record; a job then shows "finishing" (final poses and
outputs), since it writes no record after its loop.

Pause holds the solver thread between two iterations; stop calls ``request_stop()``; save writes
``checkpoint.save_checkpoint(path, solver.state_dict())`` (for an ab initio job, its own
``checkpoint()``) between two iterations, so the state saved is consistent.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import traitlets

from ..viz import solver_history_figure, volume_slices_figure
from ._common import new_image, show_figure
from .dashboard_panels import LivePanels, live_panels, target_progress

__all__ = ["SolverDashboard", "SolverDashboardView", "SolverMonitor"]


class SolverMonitor(traitlets.HasTraits):
    """The latest state of the watched run (set by the dashboard, read by its labels).

    Traits
    ------
    status : "ready", "running", "paused", "stopping", "finishing" (a foreground job past its
        loop), "finished", "stopped" or "error"
    phase : the ab initio job's phase ("common", "half1", "half2"; "" for a bare solver)
    iteration, n_records : int
    max_freq_invA, resolution_A : float (band limit and 1 / band limit)
    objective, heldout_nll, fraction_evaluated : float (latest values; NaN before any)
    message : str (last event: checkpoint written, error, stop reason)
    redraw_interval_s : float (minimum time between two redraws of the figures)
    """

    status = traitlets.Unicode("ready")
    phase = traitlets.Unicode("")
    iteration = traitlets.Int(0)
    n_records = traitlets.Int(0)
    max_freq_invA = traitlets.Float(math.nan)
    resolution_A = traitlets.Float(math.nan)
    objective = traitlets.Float(math.nan)
    heldout_nll = traitlets.Float(math.nan)
    fraction_evaluated = traitlets.Float(math.nan)
    message = traitlets.Unicode("")
    redraw_interval_s = traitlets.Float(3.0)


def _is_job(target: Any) -> bool:
    from ..abinitio import AbInitioRun

    return isinstance(target, AbInitioRun)


@dataclass
class SolverDashboardView:
    """The dashboard: display ``widget``; :meth:`start` runs the work in a thread,
    :meth:`run` in the foreground.

    Attributes
    ----------
    widget : ipywidgets.VBox
    monitor : SolverMonitor
    start_button, pause_button, resume_button, stop_button, save_button : ipywidgets.Button
    redraw_interval : ipywidgets.BoundedFloatText (linked to ``monitor.redraw_interval_s``)
    status : ipywidgets.HTML
        One line from the monitor (status, iteration, band limit, fraction evaluated, ...).
    history_image, map_image : ipywidgets.Image
    panels : LivePanels
        The iso-surface (``panels.iso``), the snapshot strip, the half-set FSC, the
        points-per-domain figure, the budget bar and ETA (``panels.eta``).
    records : list of dict
        Every record received, with the job's ``phase`` ("" for a bare solver).
    target : the SAGDSolver or AbInitioRun
    checkpoint_path : Path (for a bare solver)
    """

    widget: Any
    monitor: SolverMonitor
    start_button: Any
    pause_button: Any
    resume_button: Any
    stop_button: Any
    save_button: Any
    redraw_interval: Any
    status: Any
    history_image: Any
    map_image: Any
    target: Any
    checkpoint_path: Path
    panels: LivePanels | None = None
    dpi: float = 72
    records: list = field(default_factory=list)
    history_figure: Any = None
    map_figure: Any = None
    result: Any = None
    error: BaseException | None = None
    n_redraws: int = 0
    _thread: threading.Thread | None = field(default=None, repr=False)
    _resume: threading.Event = field(default_factory=threading.Event, repr=False)
    _save_requested: bool = field(default=False, repr=False)
    _last_draw: float = field(default=-math.inf, repr=False)
    _latest_solver: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _previous_callback: Any = field(default=None, repr=False)
    _drawer: threading.Thread | None = field(default=None, repr=False)
    _draw_event: threading.Event = field(default_factory=threading.Event, repr=False)
    _pending: dict | None = field(default=None, repr=False)
    _drawer_quit: bool = field(default=False, repr=False)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def is_job(self) -> bool:
        """True when watching an :class:`~cryonb.abinitio.AbInitioRun`."""
        return _is_job(self.target)

    @property
    def running(self) -> bool:
        """True while the background thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def current_solver(self) -> Any:
        """The solver that reported last (the job's common or half solver)."""
        if self._latest_solver is not None:
            return self._latest_solver
        return None if self.is_job else self.target

    # ------------------------------------------------------------------ callback
    def on_record(self, solver: Any, record: dict) -> None:
        """Receive one iteration's record (called on the solver's thread)."""
        phase = ""
        if self.is_job:
            phase = "common" if solver is getattr(self.target, "common", None) else next(
                (h.name for h in getattr(self.target, "halves", []) if h.solver is solver), "")
        with self._lock:
            self.records.append({**record, "phase": phase})
            self._latest_solver = solver
            if self.panels is not None and phase != "half2":  # half1 stands for both
                self.panels.collect(self.target, solver, record, phase,
                                    int(record.get("clock", record["iteration"])))
        m = self.monitor
        with m.hold_trait_notifications():
            if not self.running and m.status in ("ready", "finished", "stopped", "error"):
                m.status = "running"  # the work runs in the foreground
            if not self.running:
                self._foreground_end(solver)
            m.phase = phase
            m.iteration = int(record["iteration"]) + 1
            m.n_records = len(self.records)
            m.max_freq_invA = float(record["max_freq_invA"])
            m.resolution_A = 1.0 / float(record["max_freq_invA"])
            m.objective = float(record["objective"])
            if math.isfinite(float(record["heldout_nll"])):
                m.heldout_nll = float(record["heldout_nll"])
            m.fraction_evaluated = float(record["fraction_evaluated"])
        self._maybe_redraw()
        self._service_requests()
        while not self._resume.is_set():  # paused: hold the solver between two iterations
            self._resume.wait(0.1)
            self._service_requests()

    def _foreground_end(self, solver: Any) -> None:
        """At a foreground record: a bare solver that has stopped is finished; a job whose
        budget is used (or whose halves have stopped) is finishing."""
        m = self.monitor
        if not self.is_job:
            if solver.done:
                m.status, m.message = "finished", solver.stop_reason
                if self.panels is not None:
                    self.panels.finish(solver.stop_reason)
            return
        halves = list(getattr(self.target, "halves", []))
        used = target_progress(self.target).fraction >= 1.0  # NaN without a budget: False
        if used or (len(halves) == 2 and all(h.solver.done for h in halves)):
            m.status = "finishing"
            m.message = "solver budget used: final poses and outputs follow"

    def _service_requests(self) -> None:
        if self._save_requested:
            self._save_requested = False
            self._save_now()

    # ------------------------------------------------------------------ drawing
    def snapshot(self) -> dict:
        """What the figures need, copied (take it on the solver's thread for a consistent map)."""
        with self._lock:
            records = list(self.records)
        solver = self.current_solver()
        snap: dict[str, Any] = {"records": records, "volume": None}
        if solver is not None and records:
            phase = self.monitor.phase
            snap["volume"] = solver.volume.copy()
            snap["pixel_size_A"] = float(solver.objective.pixel_size_A)  # the Objective protocol
            snap["label"] = f"iteration {solver.iteration}" + (f" ({phase})" if phase else "")
        if self.panels is not None:
            with self._lock:
                snap.update(self.panels.snapshot(self.target))
        return snap

    def _draw(self, snap: dict) -> None:
        self.history_figure = show_figure(
            self.history_image, solver_history_figure(snap["records"]), self.dpi)
        if snap["volume"] is not None:
            fig = volume_slices_figure(snap["volume"], snap["pixel_size_A"],
                                       titles=[snap["label"]], size_in=2.0)
            self.map_figure = show_figure(self.map_image, fig, self.dpi)
        if self.panels is not None and snap["records"]:
            self.panels.draw(snap, self.dpi)
        self.n_redraws += 1

    def redraw(self) -> None:
        """Redraw the history and the current map's central sections now."""
        self._last_draw = time.monotonic()
        self._draw(self.snapshot())

    def _maybe_redraw(self) -> None:
        if time.monotonic() - self._last_draw < self.monitor.redraw_interval_s:
            return
        self._last_draw = time.monotonic()
        snap = self.snapshot()
        if self._drawer is not None and self._drawer.is_alive():
            with self._lock:
                self._pending = snap  # the drawing thread takes the latest one
            self._draw_event.set()
        else:  # the solver runs in the foreground: draw here
            self._draw(snap)

    def _drawing_loop(self) -> None:
        while True:
            self._draw_event.wait()
            self._draw_event.clear()
            with self._lock:
                snap, self._pending = self._pending, None
            if snap is not None:
                try:
                    self._draw(snap)
                except Exception as exc:  # keep the solver going; report it
                    self.monitor.message = f"drawing failed: {exc}"
            if self._drawer_quit:
                return

    # ------------------------------------------------------------------ controls
    def start(self) -> SolverDashboardView:
        """Run the solver (``run()``) or the job (``run()``) in a background thread."""
        if self.running:
            raise RuntimeError("already running")
        self._resume.set()
        self.error = None
        self.monitor.status = "running"
        self.monitor.message = ""
        self._drawer_quit = False
        self._drawer = threading.Thread(target=self._drawing_loop, name="cryonb-dashboard",
                                        daemon=True)
        self._drawer.start()
        self._thread = threading.Thread(target=self._work, name="cryonb-solver", daemon=True)
        self._thread.start()
        self._update_buttons()
        return self

    def run(self) -> Any:
        """Run the solver or the job in the foreground (the cell blocks; the figures redraw
        between iterations); returns its result (the job's summary or the map).

        The status reads "running", then "finished" (or "stopped"); the ETA becomes what the
        run used.  An exception is shown in the dashboard and raised.
        """
        if self.running:
            raise RuntimeError("already running in the background")
        self._resume.set()
        self.error = None
        self.monitor.status, self.monitor.message = "running", ""
        self._execute()
        self.redraw()
        self._update_buttons()
        if self.error is not None:
            raise self.error
        return self.result

    def _execute(self) -> None:
        """Run the work here; set the status, the message and the panels' end."""
        if self.panels is not None:
            self.panels.finished = None
        try:
            if self.is_job:
                self.result = self.target.run()
            else:
                self.result = self.target.run(progress=False)
            stopped = (self.result.get("status") == "interrupted" if isinstance(self.result, dict)
                       else not self.target.done)
            self.monitor.status = "stopped" if stopped else "finished"
            if not self.is_job and self.target.done:
                self.monitor.message = self.target.stop_reason
            elif isinstance(self.result, dict):
                reasons = self.result.get("stop_reasons") or []
                self.monitor.message = f"job {self.result.get('status', '')}" + (
                    f": {reasons[0]}" if reasons else "")
            if self.panels is not None:
                with self._lock:
                    self.panels.progress = target_progress(self.target)
                self.panels.finish(("stopped: " if stopped else "") + self.monitor.message)
        except BaseException as exc:  # shown in the dashboard, re-raised by wait() / run()
            self.error = exc
            self.monitor.status = "error"
            self.monitor.message = "".join(traceback.format_exception_only(type(exc), exc))

    def _work(self) -> None:
        try:
            self._execute()
        finally:
            self._resume.set()
            self._drawer_quit = True
            self._draw_event.set()
            if self._drawer is not None:
                self._drawer.join()
            self.redraw()
            self._update_buttons()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the work ends; returns its result (the job's summary or the map)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def pause(self) -> None:
        """Hold the solver after the current iteration."""
        if self.running:
            self._resume.clear()
            self.monitor.status = "paused"
            self._update_buttons()

    def resume(self) -> None:
        """Continue after :meth:`pause`."""
        self._resume.set()
        if self.running:
            self.monitor.status = "running"
        self._update_buttons()

    def stop(self) -> None:
        """``request_stop()``: the run ends after the current iteration (a job checkpoints)."""
        self.target.request_stop()
        if self.running:
            self.monitor.status = "stopping"
        self._resume.set()
        self._update_buttons()

    def save_checkpoint(self) -> None:
        """Save between two iterations (now, when nothing is running)."""
        if self.running:
            self._save_requested = True
            self.monitor.message = "checkpoint requested (written after this iteration)"
            if not self._resume.is_set():
                return  # the paused loop in on_record writes it within 0.1 s
        else:
            self._save_now()

    def _save_now(self) -> None:
        from ..checkpoint import save_checkpoint

        try:
            if self.is_job:
                if getattr(self.target, "common", None) is None:
                    self.monitor.message = "nothing to save yet: start the job first"
                    return
                path = self.target.checkpoint()
            else:
                path = save_checkpoint(self.checkpoint_path, self.target.state_dict())
            self.monitor.message = (f"checkpoint written: {path} "
                                    f"(iteration {self.monitor.iteration})")
        except Exception as exc:
            self.monitor.message = f"checkpoint failed: {exc}"

    def _update_buttons(self) -> None:
        running = self.running
        paused = running and not self._resume.is_set()
        self.start_button.disabled = running
        self.pause_button.disabled = not running or paused
        self.resume_button.disabled = not paused
        self.stop_button.disabled = not running

    def detach(self) -> None:
        """Give the solver (or job) its previous callback back."""
        self.target.callback = self._previous_callback


def _status_html(m: SolverMonitor) -> str:
    def fmt(x: float, spec: str = ".4g") -> str:
        return "–" if not math.isfinite(x) else format(x, spec)

    phase = f" ({m.phase})" if m.phase else ""
    return (f"<b>{m.status}</b>{phase} &nbsp; iteration {m.iteration} &nbsp; band limit "
            f"{fmt(m.max_freq_invA)} Å⁻¹ = {fmt(m.resolution_A, '.1f')} Å &nbsp; objective "
            f"{fmt(m.objective)} &nbsp; held-out {fmt(m.heldout_nll)} &nbsp; points evaluated "
            f"{fmt(m.fraction_evaluated, '.3g')}"
            + (f"<br><small>{m.message}</small>" if m.message else ""))


def SolverDashboard(solver_or_run: Any, *, checkpoint_path: str | Path = "checkpoint.npz",
                    redraw_interval_s: float = 3.0, dpi: float = 72, show_3d: bool = True,
                    iso_size_px: int = 300, snapshot_kind: str = "projection"
                    ) -> SolverDashboardView:
    """A live view of a :class:`~cryonb.sagd.SAGDSolver` or :class:`~cryonb.abinitio.AbInitioRun`.

    Parameters
    ----------
    solver_or_run : SAGDSolver or AbInitioRun
        Its ``callback`` is taken over (the previous one is still called; :meth:`detach`
        restores it).  Records arrive whether the work runs through :meth:`start` (background
        thread) or in the foreground (``solver.run()``).
    checkpoint_path : where "save" writes a bare solver's state (a job writes
        ``out_dir/checkpoint.npz``)
    redraw_interval_s : minimum time between two redraws of the figures (and of the
        iso-surface)
    show_3d : add the live iso-surface of the current map (ipyvolume)
    snapshot_kind : what the strip shows of each snapshot: ``"projection"`` (sum along z),
        ``"max"`` or ``"section"`` (:func:`cryonb.viz.snapshot_view`)
    """
    import ipywidgets as widgets

    monitor = SolverMonitor(redraw_interval_s=float(redraw_interval_s))
    buttons = {name: widgets.Button(description=name, icon=icon,
                                    layout=widgets.Layout(width="110px"))
               for name, icon in (("start", "play"), ("pause", "pause"), ("resume", "play"),
                                  ("stop", "stop"), ("save", "save"))}
    interval = widgets.BoundedFloatText(min=0.0, max=600.0, step=0.5,
                                        description="redraw (s)",
                                        layout=widgets.Layout(width="170px"))
    traitlets.link((monitor, "redraw_interval_s"), (interval, "value"))
    status = widgets.HTML()
    view = SolverDashboardView(
        widget=None, monitor=monitor, start_button=buttons["start"],
        pause_button=buttons["pause"], resume_button=buttons["resume"],
        stop_button=buttons["stop"], save_button=buttons["save"], redraw_interval=interval,
        status=status, history_image=new_image(), map_image=new_image(flex="0 0 auto"),
        target=solver_or_run, checkpoint_path=Path(checkpoint_path), dpi=dpi,
        panels=live_panels(show_3d, iso_size_px, snapshot_kind))
    view._resume.set()
    monitor.observe(lambda _c: setattr(status, "value", _status_html(monitor)),
                    names=["status", "iteration", "message", "phase"])
    status.value = _status_html(monitor)
    buttons["start"].on_click(lambda _b: view.start())
    buttons["pause"].on_click(lambda _b: view.pause())
    buttons["resume"].on_click(lambda _b: view.resume())
    buttons["stop"].on_click(lambda _b: view.stop())
    buttons["save"].on_click(lambda _b: view.save_checkpoint())

    previous = solver_or_run.callback
    view._previous_callback = previous
    if _is_job(solver_or_run):
        def job_callback(run: Any, solver: Any, record: dict) -> None:
            if previous is not None:
                previous(run, solver, record)
            view.on_record(solver, record)

        solver_or_run.callback = job_callback
    else:
        def solver_callback(solver: Any, record: dict) -> None:
            if previous is not None:
                previous(solver, record)
            view.on_record(solver, record)

        solver_or_run.callback = solver_callback
    panels = view.panels
    map_row = [view.map_image] + ([panels.iso.widget] if panels.iso is not None else [])
    view.widget = widgets.VBox([
        widgets.HBox([*buttons.values(), interval]), status,
        widgets.HBox([panels.progress_bar, panels.eta]), view.history_image,
        widgets.HBox(map_row, layout=widgets.Layout(align_items="flex-start")),
        widgets.HTML("<b>the map against solver time</b> (one snapshot per band limit)"),
        widgets.HBox([panels.strip_image]),
        widgets.HBox([panels.fsc_image, panels.is_image],
                     layout=widgets.Layout(align_items="flex-start"))])
    view._update_buttons()
    view.redraw()
    return view
