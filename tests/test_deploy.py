"""
The deployment files in deploy/, checked as far as this machine allows:
the systemd unit with systemd-analyze, the Kubernetes manifest and the
Containerfile for what they must say, and the configuration they carry
parsed by txturn's own options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

import yaml
from twisted.internet import defer, threads
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests import source_path
from txturn.app.options import SECRET_VARIABLE, Options

DEPLOY = source_path("deploy")
reactor: Any = _reactor


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
    def unit(self) -> tuple[str, str]:
        """
        The unit as shipped, and a copy whose ExecStart is this
        installation's twistd (systemd-analyze verify checks that it
        exists), in a directory of its own.
        """
        unit = read("txturn.service")
        argv = directives(unit)["ExecStart"].split()
        twistd = shutil.which("twistd")
        if shutil.which("systemd-analyze") is None or twistd is None:
            raise SkipTest("systemd-analyze or twistd is not installed")
        path = os.path.join(self.mktemp() + ".d", "txturn.service")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write(unit.replace(argv[0], os.path.realpath(twistd)))
        return unit, path

    def test_unit(self) -> None:
        """
        systemd-analyze verifies the unit; it runs twistd from a virtual
        environment (Debian 12 refuses a system-wide pip install), says
        when it is ready (Type=notify), reloads with SIGHUP, runs
        unprivileged with a high descriptor limit, and its command line
        parses.
        """
        unit, path = self.unit()
        settings = directives(unit)
        self.assertEqual(settings["Type"], "notify")
        self.assertEqual(settings["ExecReload"], "/bin/sh -c 'kill -HUP $MAINPID'")
        self.assertEqual(settings["User"], "txturn")
        self.assertGreaterEqual(int(settings["LimitNOFILE"]), 65536)
        argv = settings["ExecStart"].split()
        self.assertEqual(argv[0], "/opt/txturn/bin/twistd")
        self.assertEqual(argv[1:4], ["--nodaemon", "--pidfile=", "turn"])
        result = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_security(self) -> None:
        """
        systemd-analyze security rates the sandbox 2.5 or better ("OK").
        """
        _, path = self.unit()
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", path],
            capture_output=True,
            text=True,
        )
        found = re.search(r"Overall exposure level for txturn.service: ([\d.]+)", result.stdout)
        self.assertIsNotNone(found, result.stdout + result.stderr)
        assert found is not None
        self.assertLessEqual(float(found.group(1)), 2.5, result.stdout)


class ContainerTests(SynchronousTestCase):
    def test_containerfile(self) -> None:
        """
        A build stage and a runtime stage of one base image given as a
        build argument; not root; the TURN ports exposed; twistd turn as
        the entry point reading the mounted configuration; a
        .containerignore that keeps history and build output out.
        """
        lines = [line for line in read("Containerfile").splitlines() if line and line[0] != "#"]
        instructions: dict[str, list[str]] = {}
        for line in lines:
            word, _, rest = line.partition(" ")
            instructions.setdefault(word, []).append(rest)
        self.assertTrue(instructions["ARG"][0].startswith("BASE=docker.io/library/python:3.11"))
        self.assertEqual(instructions["FROM"], ["${BASE} AS build", "${BASE}"])
        self.assertNotIn(instructions["USER"][-1], ("0", "root"))
        self.assertTrue(
            {"3478/udp", "3478/tcp", "5349/tcp"} <= set(instructions["EXPOSE"][0].split())
        )
        self.assertEqual(json.loads(instructions["ENTRYPOINT"][0])[:2], ["twistd", "--nodaemon"])
        self.assertEqual(json.loads(instructions["CMD"][0]), ["-c", "/etc/txturn/turnserver.conf"])
        with open(source_path(".containerignore")) as f:
            ignored = f.read().split()
        self.assertTrue({".git", "build", "dist"} <= set(ignored))


class ContainerBuildTests(TestCase):
    """
    The image built with podman from a base made of Debian's packages (no
    registry is reachable here), and uclient relaying through it.
    """

    BASE = "localhost/txturn-test-base:bookworm"
    IMAGE = "localhost/txturn-test:latest"
    PACKAGES = "python3,python3-venv"

    def podman(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )

    def setUp(self) -> None:
        for tool in ("podman", "mmdebstrap"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (apt-get install podman runc mmdebstrap)")
        if os.getuid() != 0:
            raise SkipTest("podman builds here as root")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.directory = directory
        # What podman needs on these machines: runc, and no default ulimits.
        conf = os.path.join(directory, "containers.conf")
        with open(conf, "w") as f:
            f.write('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": conf}

    def pip_arguments(self) -> list[str]:
        """
        podman build arguments for this machine's pip: its CA bundle where
        a TLS-inspecting proxy stands between it and PyPI.
        """
        certificates = os.environ.get("PIP_CERT")
        if not certificates:
            return []
        return ["--build-arg", "PIP_CERT=/host-ca.pem", "-v", f"{certificates}:/host-ca.pem:ro"]

    @defer.inlineCallbacks
    def relays_uclient(self, port: int, peer_port: int) -> Any:
        """
        uclient's five clients relay 20 messages each through the server
        on 127.0.0.1:C{port} to an echo peer, losing none.
        """
        from tests.test_interop import UdpDrops, assert_relayed, require, spawn, uclient_args

        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        drops = UdpDrops()
        out, err, _ = yield getProcessOutputAndValue(
            require("turnutils_uclient"),
            uclient_args(port, peer_port, 20, 5),
            env=os.environ.copy(),
        )
        output = (out + err).decode(errors="replace")
        sent, _ = assert_relayed(self, output, drops)
        self.assertGreaterEqual(sent, 100, output[-2000:])

    def base_image(self) -> None:
        """
        Debian 12's Python as a base image, made once per machine.
        """
        if self.podman("image", "exists", self.BASE).returncode == 0:
            return
        tarball = os.path.join(self.directory, "base.tar")
        made = subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={self.PACKAGES}"]
            + ["--format=tar", "bookworm", tarball, "http://deb.debian.org/debian"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if made.returncode != 0:
            raise SkipTest(f"mmdebstrap could not make a base image: {made.stderr[-500:]}")
        imported = self.podman("import", tarball, self.BASE)
        self.assertEqual(imported.returncode, 0, imported.stderr)

    @defer.inlineCallbacks
    def test_build_and_relay(self) -> Any:
        """
        The image builds (the fast path compiled in the build stage, the
        plugin cache written there), runs as its own user without
        writing the plugin cache, and relays uclient's calls.
        """
        from tests.test_interop import require, spawn
        from tests.test_service import free_udp_port

        require("turnutils_uclient")  # skip early, before a long build
        yield threads.deferToThread(self.base_image)
        build = ["build", "--network", "host", "--build-arg", f"BASE={self.BASE}"]
        certificates = os.environ.get("PIP_CERT")
        if certificates:  # a TLS-inspecting proxy between this machine and PyPI
            build += [
                "--build-arg",
                "PIP_CERT=/host-ca.pem",
                "-v",
                f"{certificates}:/host-ca.pem:ro",
            ]
        build += ["-f", source_path("deploy", "Containerfile"), "-t", self.IMAGE, source_path()]
        built = yield threads.deferToThread(self.podman, *build)
        # The build stage's image, untagged: gone with the test.
        self.addCleanup(lambda: threads.deferToThread(self.podman, "image", "prune", "-f"))
        self.assertEqual(built.returncode, 0, (built.stdout + built.stderr)[-3000:])

        port, peer_port = free_udp_port(), free_udp_port()
        etc = os.path.join(self.directory, "etc")
        os.makedirs(etc)
        with open(os.path.join(etc, "turnserver.conf"), "w") as f:
            f.write(f"listening-port={port}\nlistening-ip=127.0.0.1\nrelay-ip=127.0.0.1\n")
            f.write("user=test:secret\nallow-loopback-peers\nno-tls\nno-dtls\n")
        os.chmod(self.directory, 0o755)
        os.chmod(etc, 0o755)
        name = f"txturn-test-{port}"
        self.patch(os, "environ", self.env)  # spawn() passes os.environ on
        server = spawn(
            ["podman", "run", "--rm", "--name", name, "--network", "host"]
            + ["-v", f"{etc}:/etc/txturn:ro", self.IMAGE],
            self,
        )
        self.addCleanup(lambda: threads.deferToThread(self.podman, "rm", "-f", "-t", "2", name))
        try:
            yield server.wait_for(rb"TURN listening on UDP", timeout=60)
        except defer.TimeoutError:
            self.fail(server.output.decode(errors="replace")[-3000:])
        self.assertIn(b"compiled fast path", server.output)
        self.assertNotIn(b"plugin cache", server.output)
        yield self.relays_uclient(port, peer_port)

    test_build_and_relay.timeout = 1200  # type: ignore[attr-defined]


SYSTEMD_IMAGE = """\
FROM {base}
COPY {wheel} txturn.service /tmp/
ARG PIP_CERT
RUN set -eu; [ -n "${{PIP_CERT:-}}" ] || unset PIP_CERT; \\
    python3 -m venv /opt/txturn; /opt/txturn/bin/pip install /tmp/{wheel}; \\
    /opt/txturn/bin/python -c \\
        "from twisted.plugin import IPlugin as I, getPlugins as g; list(g(I))"; \\
    useradd --system --home-dir /var/lib/txturn --shell /usr/sbin/nologin txturn; \\
    install -D -m 0640 -g txturn /dev/null /etc/txturn/turnserver.conf; \\
    cp /tmp/txturn.service /etc/systemd/system/; systemctl enable txturn
CMD ["/lib/systemd/systemd"]
"""


class SystemdRunTests(ContainerBuildTests):
    """
    The unit as shipped, run by systemd (Debian 12's, as PID 1 in a
    container): the install steps of doc/deployment.rst, the sandbox
    that rates 1.4, and still it starts, says it is ready, relays and
    reloads.
    """

    BASE = "localhost/txturn-test-systemd:bookworm"
    IMAGE = "localhost/txturn-test-systemd-unit:latest"
    PACKAGES = "systemd,systemd-sysv,python3,python3-venv"

    def exec(self, name: str, command: str) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", name, "sh", "-c", command, timeout=120)

    @defer.inlineCallbacks
    def test_build_and_relay(self) -> Any:
        from tests.test_interop import require
        from tests.test_service import free_udp_port

        require("turnutils_uclient")  # skip early, before a long build
        yield threads.deferToThread(self.base_image)
        context = os.path.join(self.directory, "context")
        os.makedirs(context)
        wheel = os.environ.get("TXTURN_WHEEL")
        if not wheel:
            raise SkipTest("no wheel to install ($TXTURN_WHEEL, which .ci/test sets)")
        shutil.copy(wheel, context)
        shutil.copy(source_path("deploy", "txturn.service"), context)
        with open(os.path.join(context, "Containerfile"), "w") as f:
            f.write(SYSTEMD_IMAGE.format(base=self.BASE, wheel=os.path.basename(wheel)))
        build = ["build", "--network", "host", *self.pip_arguments()]
        built = yield threads.deferToThread(self.podman, *build, "-t", self.IMAGE, context)
        self.assertEqual(built.returncode, 0, (built.stdout + built.stderr)[-3000:])
        self.addCleanup(lambda: threads.deferToThread(self.podman, "image", "prune", "-f"))

        port, peer_port = free_udp_port(), free_udp_port()
        name = f"txturn-systemd-{port}"
        started = yield threads.deferToThread(
            self.podman,
            *["run", "-d", "--name", name, "--privileged", "--systemd=always"],
            *["--network", "host", self.IMAGE],
        )
        self.assertEqual(started.returncode, 0, started.stderr)
        self.addCleanup(lambda: threads.deferToThread(self.podman, "rm", "-f", "-t", "2", name))
        settings = f"listening-port={port}\\nlistening-ip=127.0.0.1\\nrelay-ip=127.0.0.1\\n"
        settings += "user=test:secret\\nallow-loopback-peers\\nno-tls\\nno-dtls\\n"
        for _ in range(100):  # until systemd runs in the container
            running = yield threads.deferToThread(self.exec, name, "systemctl is-system-running")
            if running.stdout.strip() in ("running", "degraded"):
                break
            yield deferLater(reactor, 0.2, lambda: None)
        configured = yield threads.deferToThread(
            self.exec,
            name,
            f"printf '{settings}' > /etc/txturn/turnserver.conf && systemctl restart txturn",
        )
        # Type=notify: restart returns once the server said READY=1.
        self.assertEqual(configured.returncode, 0, configured.stderr)
        shown = yield threads.deferToThread(
            self.exec, name, "systemctl show txturn -p ActiveState -p StatusText -p User"
        )
        self.assertIn("ActiveState=active", shown.stdout)
        self.assertIn("StatusText=Relaying", shown.stdout)
        self.assertIn("User=txturn", shown.stdout)

        yield self.relays_uclient(port, peer_port)

        reloaded = yield threads.deferToThread(
            self.exec,
            name,
            "echo user=bob:builder >> /etc/txturn/turnserver.conf && systemctl reload txturn "
            "&& sleep 1 && journalctl -u txturn --no-pager",
        )
        self.assertEqual(reloaded.returncode, 0, reloaded.stderr)
        self.assertIn("users added: bob", reloaded.stdout)
        self.assertNotIn("Traceback", reloaded.stdout)

    test_build_and_relay.timeout = 1200  # type: ignore[attr-defined]


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


def manifest() -> tuple[dict[str, Any], dict[str, Any], str]:
    """
    The pod spec, its one container and the ConfigMap's turnserver.conf.
    """
    kinds = {d["kind"]: d for d in yaml.safe_load_all(read("kubernetes.yaml"))}
    pod: dict[str, Any] = kinds["DaemonSet"]["spec"]["template"]["spec"]
    return pod, pod["containers"][0], kinds["ConfigMap"]["data"]["turnserver.conf"]


def entrypoint() -> list[str]:
    """
    The Containerfile's ENTRYPOINT, as a list.
    """
    for line in read("Containerfile").splitlines():
        if line.startswith("ENTRYPOINT "):
            return list(json.loads(line[len("ENTRYPOINT ") :]))
    raise AssertionError("the Containerfile has no ENTRYPOINT")


class KubernetesDrainTests(TestCase):
    """
    The pod's stop, as the kubelet does it, with the image's entrypoint
    as PID 1 in its own PID namespace: the manifest's preStop hook, then
    SIGTERM at once.
    """

    @defer.inlineCallbacks
    def test_stop_drains(self) -> Any:
        """
        A uclient call that is relaying when the pod is stopped goes on
        relaying until it ends, losing nothing; /readyz says "draining"
        meanwhile; the server exits by itself once the call has ended.
        """
        from tests.test_health import get
        from tests.test_interop import UdpDrops, assert_relayed, require, spawn, uclient_args
        from tests.test_service import free_udp_port

        if os.getuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
            raise SkipTest("needs root, unshare and nsenter for a PID namespace")
        uclient = require("turnutils_uclient")
        pod, container, conf = manifest()
        port, peer_port, metrics_port = free_udp_port(), free_udp_port(), free_udp_port()
        spawn([require("turnutils_peer"), "-L", "127.0.0.1", "-p", str(peer_port)], self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = os.path.join(directory, "turnserver.conf")
        drain_timeout = 15
        with open(config, "w") as f:
            # The manifest's file, on loopback ports, with a short drain.
            f.write(conf.replace("drain-timeout=300", f"drain-timeout={drain_timeout}"))
            f.write(f"listening-port={port}\nprometheus-port={metrics_port}\n")
            f.write("listening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nallow-loopback-peers\n")
            f.write("realm=txturn\nuser=test:secret\nno-tls\nno-dtls\n")
        self.assertGreater(pod["terminationGracePeriodSeconds"], 300)
        environment = {"HOST_IP": "127.0.0.1"}
        args = [config if a == "/etc/txturn/turnserver.conf" else a for a in container["args"]]
        args = [re.sub(r"\$\((\w+)\)", lambda m: environment[m.group(1)], a) for a in args]
        server = spawn(["unshare", "--pid", "--fork", "--mount-proc", *entrypoint(), *args], self)
        yield server.wait_for(rb"TURN listening on UDP")
        assert server.transport is not None
        unshare = server.transport.pid
        with open(f"/proc/{unshare}/task/{unshare}/children") as f:
            [pid_1] = [int(p) for p in f.read().split()]
        self.assertEqual((yield get(metrics_port, "/readyz")), (200, "ready\n"))

        drops = UdpDrops()
        call = getProcessOutputAndValue(
            uclient, ["-t", *uclient_args(port, peer_port, 100, 2)], env=os.environ.copy()
        )
        yield server.wait_for(rb"(Allocated .*? for test.*?){2}")
        # What the kubelet does: the preStop hook in the pod's namespaces
        # (its "python" is the image's), and when it returns, SIGTERM.
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        nsenter = ["nsenter", "--target", str(pid_1), "--pid", "--mount", "--"]
        done = yield threads.deferToThread(subprocess.run, [*nsenter, *hook], timeout=30)
        self.assertEqual(done.returncode, 0)
        os.kill(pid_1, signal.SIGTERM)
        stopped_at = time.monotonic()
        yield server.wait_for(rb"SIGTERM while draining")
        self.assertEqual((yield get(metrics_port, "/readyz")), (503, "not ready: draining\n"))

        out, err, code = yield call
        output = (out + err).decode(errors="replace")
        # A drain that dropped the calls would lose nearly everything
        # after the stop (the peer leg is UDP: see assert_relayed).
        assert_relayed(self, output, drops, sent=200)
        # uclient's TCP connections close with the call, which ends its
        # allocations: the drain is over, and the server exits at once
        # (which of the two processes trial hears of first is the
        # scheduler's choice, so the log says whether the server cut a
        # call: an allocation it deleted itself says "server stopping").
        yield server.ended
        self.assertLess(time.monotonic() - stopped_at, drain_timeout)
        self.assertIn(b"Drained: the last allocation ended", server.output)
        self.assertNotIn(b"(server stopping)", server.output)
        self.assertRegex(server.output.decode(), r"deleted \(connection closed\)")
