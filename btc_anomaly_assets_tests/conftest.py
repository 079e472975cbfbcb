"""Shared fixtures: the Spark sessions and the one Spark Connect server the suite starts itself."""

pytest_plugins = ["btc_anomaly_assets_tests.conftest_spark"]
