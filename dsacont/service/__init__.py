"""The control plane: the streaming service and what it runs.

The watcher, ingest queue, executor, service loop and status; the per-group pipeline it hands to
workers, with its options, its mosaic trigger and the catalogues of its images; the products
database; the sky model kept from earlier tiles; replay of an archive.

Only this package reads and writes the state databases; its workers get what they need with each
task and return what they made (:mod:`dsacont.service.state`).
"""
from dsacont.service.executor import Executor, ServiceContext, run_group_task, run_hook_task
from dsacont.service.loop import DEFAULT_ON_COMPLETE, DEFAULT_PROCESSOR, ServiceOptions, ServiceSummary, run_service
from dsacont.service.mosaics import maybe_mosaic, on_group_complete
from dsacont.service.options import PipelineOptions
from dsacont.service.pipeline import convert_only, process_group
from dsacont.service.products import Products
from dsacont.service.queue import GroupRecord, IngestQueue, WorkerId
from dsacont.service.replay import plan, replay
from dsacont.service.sky import SkyStore
from dsacont.service.state import known_for_group, known_for_hook, record_products
from dsacont.service.status import format_status, status
from dsacont.service.watcher import Watcher, validate_subband_file

__all__ = [
    "DEFAULT_ON_COMPLETE", "DEFAULT_PROCESSOR", "Executor", "GroupRecord", "IngestQueue", "PipelineOptions",
    "Products", "ServiceContext", "ServiceOptions", "ServiceSummary", "SkyStore", "Watcher", "WorkerId", "convert_only",
    "format_status", "known_for_group", "known_for_hook", "maybe_mosaic", "on_group_complete", "plan",
    "process_group", "record_products", "replay", "run_group_task", "run_hook_task", "run_service",
    "status", "validate_subband_file",
]
