#!/usr/bin/env python3
"""Call Securely's sockets from Python's grpcio, unchanged: no authority option.

For every socket (control, proxyd, dnsd, queued): a grpc.health.v1 Check and the list of
services from server reflection. Then one job is pushed to queued's Queue. Prints one
line per step; exits 1 with the gRPC error when a call fails.

    python3 examples/python/queue_push.py [--run-dir DIR] QUEUE PAYLOAD

Needs grpcio, grpcio-tools and protobuf (Debian: python3-grpcio python3-grpc-tools
python3-protobuf; pip: grpcio grpcio-tools). The Python stubs are generated at start
from proto/proto/queue.proto and the standard health and reflection protos beside this
file (protos/) into a temporary directory, so nothing generated is kept in the tree.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto" / "proto"
STANDARD_PROTOS = HERE / "protos"
SOCKETS = ["control", "proxyd", "dnsd", "queued"]
CALL_TIMEOUT_SECONDS = 10


def default_run_dir():
    """Where a stack started without `runtime_dir` keeps its sockets."""
    if os.geteuid() == 0:
        return "/run/securely"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return os.path.join(runtime, "securely")
    return os.path.join(tempfile.gettempdir(), "securely-%d" % os.geteuid())


def generate_stubs(proto_dir, out_dir):
    """Writes *_pb2.py and *_pb2_grpc.py for the three protos used here into out_dir."""
    args = [
        "grpc_tools.protoc",
        "-I%s" % proto_dir,
        "-I%s" % STANDARD_PROTOS,
        "--python_out=%s" % out_dir,
        "--grpc_python_out=%s" % out_dir,
        "queue.proto",
        "health.proto",
        "reflection.proto",
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed on %s" % proto_dir)
    sys.path.insert(0, out_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=default_run_dir(), help="the stack's runtime_dir")
    parser.add_argument("--proto-dir", default=str(PROTO_DIR), help="Securely's .proto files")
    parser.add_argument("queue")
    parser.add_argument("payload")
    args = parser.parse_args()

    print("grpcio %s" % grpc.__version__)
    with tempfile.TemporaryDirectory(prefix="securely-stubs-") as stubs:
        generate_stubs(args.proto_dir, stubs)
        import health_pb2, health_pb2_grpc
        import queue_pb2, queue_pb2_grpc
        import reflection_pb2, reflection_pb2_grpc

        try:
            for name in SOCKETS:
                path = os.path.join(args.run_dir, name + ".sock")
                # Exactly what a user writes: no options, so grpcio picks the :authority.
                with grpc.insecure_channel("unix:" + path) as channel:
                    health = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_SECONDS
                    )
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
                    print("%s.sock: %s" % (name, status))

                    request = reflection_pb2.ServerReflectionRequest(list_services="")
                    replies = reflection_pb2_grpc.ServerReflectionStub(
                        channel
                    ).ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_SECONDS)
                    for reply in replies:
                        services = reply.list_services_response.service
                        print("%s.sock services: %s" % (name, " ".join(s.name for s in services)))

            path = os.path.join(args.run_dir, "queued.sock")
            with grpc.insecure_channel("unix:" + path) as channel:
                pushed = queue_pb2_grpc.QueueStub(channel).Push(
                    queue_pb2.PushRequest(queue=args.queue, payload=args.payload.encode()),
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                print("pushed job %d to %s" % (pushed.id, args.queue))
        except grpc.RpcError as error:
            sys.exit("gRPC call failed: %s: %s" % (error.code(), error.details()))


if __name__ == "__main__":
    main()
