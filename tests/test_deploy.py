"""
The deployment files in deploy/, checked as far as this machine allows:
the systemd unit with systemd-analyze, the Kubernetes manifest and the
Containerfile for what they must say, and the configuration they carry
parsed by txturn's own options.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import source_path
from txturn.options import SECRET_VARIABLE, Options

DEPLOY = source_path("deploy")


def read(name: str) -> str:
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


def directives(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found[key] = value
    return found


class SystemdTests(SynchronousTestCase):
    def test_unit(self) -> None:
        """
        systemd-analyze verifies the unit (with ExecStart pointing at this
        machine's twistd); it reloads with SIGHUP, runs unprivileged with
        a high descriptor limit, and its command line parses.
        """
        unit = read("txturn.service")
        settings = directives(unit)
        self.assertEqual(settings["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertEqual(settings["User"], "txturn")
        self.assertGreaterEqual(int(settings["LimitNOFILE"]), 65536)
        argv = settings["ExecStart"].split()
        self.assertEqual(argv[1:4], ["--nodaemon", "--pidfile=", "turn"])
        analyze, twistd = shutil.which("systemd-analyze"), shutil.which("twistd")
        if analyze is None or twistd is None:
            raise SkipTest("systemd-analyze or twistd is not installed")
        path = os.path.join(self.mktemp() + ".d", "txturn.service")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write(unit.replace(argv[0], os.path.realpath(twistd)))
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))


class ContainerTests(SynchronousTestCase):
    def test_containerfile(self) -> None:
        """
        Not root, the TURN ports exposed, twistd turn as the entry point
        reading the mounted configuration.
        """
        lines = [line for line in read("Containerfile").splitlines() if line and line[0] != "#"]
        instructions: dict[str, list[str]] = {}
        for line in lines:
            word, _, rest = line.partition(" ")
            instructions.setdefault(word, []).append(rest)
        self.assertTrue(instructions["FROM"][0].startswith("docker.io/library/python:3.11"))
        self.assertNotIn(instructions["USER"][-1], ("0", "root"))
        self.assertTrue(
            {"3478/udp", "3478/tcp", "5349/tcp"} <= set(instructions["EXPOSE"][0].split())
        )
        self.assertEqual(json.loads(instructions["ENTRYPOINT"][0])[:2], ["twistd", "--nodaemon"])
        self.assertEqual(json.loads(instructions["CMD"][0]), ["-c", "/etc/txturn/turnserver.conf"])


class KubernetesTests(SynchronousTestCase):
    def test_manifest(self) -> None:
        """
        A DaemonSet on the node's network, not root, draining on stop
        within its grace period, whose configuration txturn parses with
        no warning (the secret coming from the environment).
        """
        documents = list(yaml.safe_load_all(read("kubernetes.yaml")))
        kinds = {d["kind"]: d for d in documents}
        self.assertEqual(set(kinds), {"ConfigMap", "DaemonSet"})
        pod: Any = kinds["DaemonSet"]["spec"]["template"]["spec"]
        self.assertTrue(pod["hostNetwork"])
        [container] = pod["containers"]
        self.assertTrue(container["securityContext"]["runAsNonRoot"])
        self.assertIn("SIGQUIT", " ".join(container["lifecycle"]["preStop"]["exec"]["command"]))
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(kinds["ConfigMap"]["data"]["turnserver.conf"])
        self.patch(os, "environ", {SECRET_VARIABLE: "from-a-secret"})
        options = Options()
        options.parseOptions([*container["args"][:1], config, "--relay-ip", "192.0.2.1"])
        self.assertEqual(options["config-warnings"], [])
        self.assertEqual(options["static-auth-secret"], ["from-a-secret"])
        self.assertGreater(pod["terminationGracePeriodSeconds"], options["drain-timeout"])
