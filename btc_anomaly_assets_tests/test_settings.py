"""The README's configuration table is the code's, and secrets never print."""

from pathlib import Path

from btc_anomaly_assets.common import settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_holds_the_current_configuration_table():
    assert settings.config_table() in README.read_text(), "regenerate the README table: btc-anomaly config"


def test_secret_values_are_masked(monkeypatch):
    monkeypatch.setenv("BLOCKCHAIR_API_KEY", "bc-secret-123")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T0/B0/very-secret")
    table = settings.config_table(with_current=True)
    assert "bc-secret-123" not in table and "very-secret" not in table
    assert "(set)" in table


def test_env_or_default_uses_envvar_only_when_set(monkeypatch):
    monkeypatch.delenv("BTC_SOURCE", raising=False)
    assert settings.env_or_default("BTC_SOURCE") == "sample"
    monkeypatch.setenv("BTC_SOURCE", "blockchair")
    assert settings.env_or_default("BTC_SOURCE").env_var_name == "BTC_SOURCE"
