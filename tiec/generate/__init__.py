"""``tiec generate``'s application: sample images with an accelerated sampler into a run folder.

- :mod:`tiec.generate.jobs`: what is sampled — a demo model with tiec's own loop, or a diffusers
  pipeline from a local folder; image ``i`` always starts from the noise of seed ``seed + i``.
- :mod:`tiec.generate.run`: one run — caching options, batches, timing and MAC counting, the record.
- :mod:`tiec.generate.run_folder`: the files of a run (images, manifests, index, grid, ``.npz``),
  written so that a run can be sharded over processes and resumed.
- :mod:`tiec.generate.processes`: which process of an ``accelerate launch`` run this is.
"""

from .jobs import DEMO_MODELS, DTYPES, PIPELINES, DemoJob, Images, PipelineJob, make_job
from .run import DEMO_DEFAULTS, GenerateOptions, generate, write_record
from .run_folder import ImageStore

__all__ = ["DEMO_DEFAULTS", "DEMO_MODELS", "DTYPES", "PIPELINES", "DemoJob", "GenerateOptions", "ImageStore",
           "Images", "PipelineJob", "generate", "make_job", "write_record"]
