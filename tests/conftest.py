"""Shared test setup: float64 kernel algebra everywhere (tests that check float32 ask for it)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
