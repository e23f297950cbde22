"""The library internals the worker relies on: checked at startup, each workaround doing what it says.

An upgrade of Faust, mode or aiokafka that renames or reshapes a patched internal must stop the
worker with a message naming it, never change its results silently.
"""

from __future__ import annotations

import asyncio
import re

import faust
import pytest
from faust.transport.drivers import aiokafka as driver
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from contracts.config import Config
from infra.broker import KAFKA_PROFILE, LOCAL_PROFILE
from streams import faust_compat
from streams.faust_compat import IncompatibleFramework, apply_broker_profile, check_internals, keep_fetched_records
from tests.test_spine_integration import CONFIG


def test_the_installed_libraries_have_every_internal_the_worker_patches():
    check_internals()  # raises when one is missing or changed


def test_a_patched_method_that_disappears_stops_the_worker_with_its_name_and_the_versions(monkeypatch):
    monkeypatch.delattr(driver.AIOKafkaConsumerThread, "_create_worker_consumer")
    with pytest.raises(IncompatibleFramework) as raised:
        check_internals()
    message = str(raised.value)
    assert "AIOKafkaConsumerThread._create_worker_consumer is gone" in message
    assert "needed by streams.faust_compat.apply_broker_profile" in message
    assert re.search(r"faust-streaming \S+ \(verified: 0\.15\.3\)", message)
    assert "aiokafka" in message and "mode-streaming" in message


def test_a_patched_method_with_another_signature_stops_the_worker(monkeypatch):
    def resume(self, clear: bool = True) -> None:  # what an upgrade could make of it
        pass

    monkeypatch.setattr(FlowControlEvent, "resume", resume)
    with pytest.raises(IncompatibleFramework, match=re.escape(
            "mode.utils.queues.FlowControlEvent.resume takes (self, clear), expected (self)")):
        check_internals()


def test_an_attribute_set_from_outside_that_the_library_no_longer_reads_stops_the_worker(monkeypatch):
    from aiokafka import AIOKafkaConsumer

    async def start(self):  # a start that reads the fetch wait from somewhere else
        pass

    monkeypatch.setattr(AIOKafkaConsumer, "start", start)
    with pytest.raises(IncompatibleFramework, match=re.escape(
            "aiokafka.AIOKafkaConsumer.start no longer uses self._fetch_max_wait_ms")):
        check_internals()


def test_a_current_event_that_faust_no_longer_reads_stops_the_worker(monkeypatch):
    monkeypatch.setattr(faust, "current_event", lambda: None)
    with pytest.raises(IncompatibleFramework, match="faust.current_event\\(\\) no longer reads"):
        check_internals()


def test_the_build_of_the_app_runs_the_check(monkeypatch, tmp_path):
    from streams.topology import build_app

    monkeypatch.delattr(FlowControlEvent, "is_active")
    config = Config.model_validate(dict(CONFIG, state_dir=str(tmp_path)))
    with pytest.raises(IncompatibleFramework, match="FlowControlEvent.is_active is gone"):
        build_app(config, "127.0.0.1:1", LOCAL_PROFILE, app_id="compat-check")


def _worker_consumer(app: faust.App):
    """The aiokafka consumer Faust would start for ``app`` (built, not started: no broker needed)."""

    async def build():
        return app.consumer._thread._create_worker_consumer(app.transport)

    return asyncio.run(build())


def test_each_app_gets_the_fetch_wait_of_its_own_broker_profile():
    local = faust.App("compat-local", broker="kafka://127.0.0.1:1", web_enabled=False)
    kafka = faust.App("compat-kafka", broker="kafka://127.0.0.1:1", web_enabled=False)
    plain = faust.App("compat-plain", broker="kafka://127.0.0.1:1", web_enabled=False)
    apply_broker_profile(local, LOCAL_PROFILE)
    apply_broker_profile(kafka, KAFKA_PROFILE)  # the second profile in one process counts too
    assert _worker_consumer(local)._fetch_max_wait_ms == LOCAL_PROFILE.fetch_max_wait_ms == 100
    assert _worker_consumer(kafka)._fetch_max_wait_ms == KAFKA_PROFILE.fetch_max_wait_ms == 500
    assert _worker_consumer(plain)._fetch_max_wait_ms == 1500  # Faust's own, for an app without a profile
    apply_broker_profile(local, KAFKA_PROFILE)  # applied again: the latest wins, the patch is not stacked
    assert _worker_consumer(local)._fetch_max_wait_ms == 500
    assert faust_compat.fetch_max_wait_ms(local) == 500


def test_flow_control_keeps_fetched_records_unless_it_resumes_from_a_suspension():
    app = faust.App("compat-flow", broker="kafka://127.0.0.1:1", web_enabled=False)
    keep_fetched_records(app)
    flow = app.flow_control
    queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()  # Faust starts suspended: a real resume clears, as upstream
    queue.put_nowait("fetched before a rebalance")
    flow.resume()  # resumed again after the seek to the committed offsets: nothing suspended, keep it
    assert queue.qsize() == 1
    flow.suspend()
    flow.resume()  # a real suspension: what was queued is dropped, as upstream
    assert queue.qsize() == 0


def test_faust_writes_its_data_directory_under_the_state_directory(tmp_path):
    from streams.topology import build_app

    config = Config.model_validate(dict(CONFIG, state_dir=str(tmp_path / "state")))
    app = build_app(config, "127.0.0.1:1", LOCAL_PROFILE, app_id="compat-datadir")
    assert app.conf.datadir.resolve() == (tmp_path / "state" / "faust" / "compat-datadir").resolve()
    assert faust_compat.fetch_max_wait_ms(app) == LOCAL_PROFILE.fetch_max_wait_ms
