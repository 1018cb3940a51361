"""Shared test setup: float64 kernel algebra everywhere (tests that check float32 ask for it), and one
XLA compilation cache for the session, shared by the test workers and the command lines the tests
start (a figure's smoke run, its split parts and its plan compile the same programs; a cached program
is the same executable, so results do not change)."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ntkrepro-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
