"""``tiec calibrate``'s application: search key steps, policy, time coordinate and split depth for
a compute budget, validate on held-out inputs and write the recommended configuration.

- :mod:`tiec.calibrate.search`: the search (:func:`calibrate`) and the pick (:func:`recommend`);
- :mod:`tiec.calibrate.candidates`: a candidate configuration, the Pareto front, schedule edits;
- :mod:`tiec.calibrate.evaluators`: sampling a candidate on a demo model or a pipeline folder;
- :mod:`tiec.calibrate.report`: the JSON, table, plot and configuration file a search writes.
"""

from .candidates import Candidate, pareto_front
from .report import markdown_table, write_calibration
from .search import calibrate, default_steps, recommend

__all__ = ["Candidate", "calibrate", "default_steps", "markdown_table", "pareto_front", "recommend",
           "write_calibration"]
