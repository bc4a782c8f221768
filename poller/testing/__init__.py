"""The test kit: loopback simulators of the remote APIs poller talks to, for the demo, the tests
and the benchmarks. It is not used by the daemon itself.

- `server`: `HttpServer`, an aiohttp.web server on 127.0.0.1 with fault injection (`fail`):
  error statuses, delays, hung or dripping answers, dropped connections, HTML pages and
  truncated JSON.
- `thread`: `SimThread`, which runs servers on an event loop in a daemon thread.
- `ruler`: `RulerSim`, the Ruler batch-status API.
- `immuta`: `ImmutaSim`, the Immuta jobs API.
- `jsonapi`: `JsonJobSim`, a generic JSON job-status API for the ``http`` source type.
- `webhook`: `WebhookSink`, a receiver for Apprise ``json://`` notifications.
- `matrix`: `MatrixSim`, the Matrix client-server endpoints Apprise's ``matrix://`` posts to.
- `script`: `Script`, the timed field changes the Ruler and Immuta simulators apply to a job
  when it is read (their ``script_job``).

Every public method of the simulators is thread-safe: a test on the main thread may drive a
server that runs on a `SimThread`. A server can also run on the caller's own loop
(``async with RulerSim() as sim: ...``).
"""

from poller.testing.immuta import ImmutaSim, NextStyle
from poller.testing.jsonapi import JsonJobSim, LoginUser, OAuthClient
from poller.testing.matrix import MatrixSim
from poller.testing.ruler import RulerSim
from poller.testing.server import (
    Delivery,
    Fault,
    FaultMode,
    Handler,
    HttpServer,
    Request,
    Response,
)
from poller.testing.thread import SimThread
from poller.testing.webhook import SinkTimeout, WebhookSink

__all__ = [
    "Delivery",
    "Fault",
    "FaultMode",
    "Handler",
    "HttpServer",
    "ImmutaSim",
    "JsonJobSim",
    "LoginUser",
    "MatrixSim",
    "NextStyle",
    "OAuthClient",
    "Request",
    "Response",
    "RulerSim",
    "SimThread",
    "SinkTimeout",
    "WebhookSink",
]
