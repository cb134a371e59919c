"""The project's provider is installed and registers its connection types, so that the UI's
connection form offers Stripe and the AI executor with their own fields."""

from __future__ import annotations

import importlib

import pytest

from execplatform import get_provider_info

OWN_TYPES = {"stripe": "StripeHook", "ai_executor": "TaskExecutorHook"}


@pytest.fixture(scope="module")
def providers():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


def test_the_provider_is_discovered_through_its_entry_point(providers):
    assert "execplatform-airflow" in providers.providers
    assert providers.providers["execplatform-airflow"].data["name"] == get_provider_info()["name"]


@pytest.mark.parametrize(("conn_type", "hook"), OWN_TYPES.items())
def test_each_connection_type_maps_to_its_hook(conn_type, hook):
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    registered = ProvidersManagerTaskRuntime().hooks[conn_type]
    assert registered is not None, f"connection type {conn_type!r} is not registered"
    assert registered.hook_class_name.rsplit(".", 1)[1] == hook
    assert registered.package_name == "execplatform-airflow"
    module, _, name = registered.hook_class_name.rpartition(".")
    assert getattr(importlib.import_module(module), name).conn_type == conn_type


def test_the_forms_name_their_fields(providers):
    stripe = providers.field_behaviours["stripe"]
    assert stripe["relabeling"]["password"] == "Secret key"
    assert "login" in stripe["hidden_fields"]
    widgets = providers.connection_form_widgets
    assert {"extra__ai_executor__timeout_seconds", "extra__ai_executor__retries"} <= set(widgets)


def test_every_class_the_provider_names_imports():
    info = get_provider_info()
    names = [c["hook-class-name"] for c in info["connection-types"]] + info["notifications"]
    for dotted in names:
        module, _, name = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), name), dotted


def test_stripe_objects_are_assets_that_openlineage_names():
    """`stripe://host/kind` is this provider's asset scheme: Airflow normalizes it with the
    provider's handler (a malformed one is refused, naming the URI) and OpenLineage names it."""
    from airflow.sdk import Asset

    from execplatform.lineage import stripe_to_openlineage, stripe_uri

    asset = Asset(uri=stripe_uri("http://127.0.0.1:8420", "coupons"))
    assert asset.uri == "stripe://127.0.0.1:8420/coupons"
    dataset = stripe_to_openlineage(asset, None)
    assert (dataset.namespace, dataset.name) == ("stripe://127.0.0.1:8420", "coupons")
    with pytest.raises(ValueError, match="stripe://api.stripe.com/v1/coupons"):
        Asset(uri="stripe://api.stripe.com/v1/coupons")
