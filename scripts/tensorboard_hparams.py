#!/usr/bin/env python3
"""Asks TensorBoard's own HParams plugin backend what it serves for a run folder, as JSON:
the experiment's hyper-parameters (with their domains) and metrics, and every session with
its hyper-parameter values, metric values and status.

    python3 scripts/tensorboard_hparams.py runs/<sweep-run>

Used by the test suite (with the tensorboard package from .venv) to check ablate's HParams
summaries with the real reader.
"""
import json
import sys

from google.protobuf import json_format
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

logdir = sys.argv[1]
multiplexer = plugin_event_multiplexer.EventMultiplexer()
multiplexer.AddRunsFromDirectory(logdir)
multiplexer.Reload()
provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
tb_context = base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer, data_provider=provider)
backend = backend_context.Context(tb_context)
ctx = context.RequestContext()

experiment = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
request = api_pb2.ListSessionGroupsRequest(
    start_index=0, slice_size=1000, allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING, api_pb2.STATUS_UNKNOWN]
)
for info in experiment.hparam_infos:
    request.col_params.add(hparam=info.name)
for info in experiment.metric_infos:
    request.col_params.add(metric=info.name)
groups = list_session_groups.Handler(ctx, backend, "", request).run()
print(json.dumps({
    "experiment": json_format.MessageToDict(experiment),
    "session_groups": json_format.MessageToDict(groups).get("sessionGroups", []),
}, indent=1))
