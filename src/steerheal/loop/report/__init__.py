"""A run's report, regenerated from events.jsonl alone: report.html (one self-contained page of sections: the
verdict, the frontier, the per-round trajectory, samples, every metric, time per stage), report.md (the same
verdict in text) and a PNG per figure. `page.SECTIONS` lists the sections; each is a function of the run's
events (`events.RunView`) to a `markup.Part`.

`build` (what `steerheal report` calls), `round_events`, and the polars `table` / `markdown` the benchmarks
print are re-exported.
"""

from steerheal.loop.report.events import round_events
from steerheal.loop.report.frame import markdown, table
from steerheal.loop.report.page import build

__all__ = ["build", "markdown", "round_events", "table"]
