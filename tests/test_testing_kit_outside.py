"""The testing kit works in someone else's project: a fresh pytest run outside this
repository gets the fixtures through the ``pytest11`` entry point and the conformance suite
by subclassing, with nothing from this repository's conftest or config."""

import os
import subprocess
import sys
import textwrap

THIRD_PARTY_TEST = textwrap.dedent('''
    import ckpt_core
    from ckpt_core.testing import FormatConformance


    def test_fixtures_come_from_the_entry_point(ckpt_example_checkpoint, ckpt_plugins_only):
        ckpt_plugins_only()
        assert ckpt_example_checkpoint.arch.family == "gpt"


    class TestCanonicalFromOutside(FormatConformance):
        format = "canonical"

        def make_example(self, tmp_path):
            from ckpt_core.testing.pytest_plugin import example_checkpoint

            ckpt_core.save(example_checkpoint(), tmp_path / "example", "canonical")
            return tmp_path / "example"
''')


def test_conformance_suite_and_fixtures_run_in_a_foreign_project(tmp_path):
    project = tmp_path / "someone_elses_plugin"
    project.mkdir()
    (project / "test_their_format.py").write_text(THIRD_PARTY_TEST)
    env = {**os.environ, "CKPT_CORE_PLUGINS": ""}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
    # the whole inherited suite ran, not just the one plain test
    assert int(run.stdout.strip().splitlines()[-1].split()[0]) > 10
