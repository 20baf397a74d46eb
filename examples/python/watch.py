#!/usr/bin/env python3
"""Follow the stack's events from Python's grpcio (Supervisor.Watch on control.sock).

Prints one line per event: `SEQ KIND DAEMON STATE PID DETAIL` (DAEMON is `-` for the
supervisor's own events), flushed as it comes, until the stream ends, Ctrl-C, or (with
--until KIND:STATE) the first event of that kind and state.

    python3 examples/python/watch.py [--run-dir DIR] [--until daemon:exited]

Needs grpcio, grpcio-tools and protobuf, as queue_push.py beside it; the stubs are
generated at start from proto/proto/supervisor.proto into a temporary directory.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_tools import protoc

from queue_push import default_run_dir

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto" / "proto"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=default_run_dir(), help="the stack's runtime_dir")
    parser.add_argument("--proto-dir", default=str(PROTO_DIR), help="Securely's .proto files")
    parser.add_argument("--until", default="", help="KIND:STATE of the last event to print")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="securely-stubs-") as stubs:
        generated = protoc.main(
            [
                "grpc_tools.protoc",
                "-I%s" % args.proto_dir,
                "--python_out=%s" % stubs,
                "--grpc_python_out=%s" % stubs,
                "supervisor.proto",
            ]
        )
        if generated != 0:
            sys.exit("protoc failed on %s" % args.proto_dir)
        sys.path.insert(0, stubs)
        import supervisor_pb2, supervisor_pb2_grpc

        path = os.path.join(args.run_dir, "control.sock")
        try:
            with grpc.insecure_channel("unix:" + path) as channel:
                events = supervisor_pb2_grpc.SupervisorStub(channel).Watch(
                    supervisor_pb2.WatchRequest()
                )
                for event in events:
                    print(
                        "%d %s %s %s %d %s"
                        % (
                            event.seq,
                            event.kind,
                            event.daemon or "-",
                            event.state,
                            event.pid,
                            event.detail,
                        ),
                        flush=True,
                    )
                    if args.until == "%s:%s" % (event.kind, event.state):
                        return
        except grpc.RpcError as error:
            sys.exit("gRPC call failed: %s: %s" % (error.code(), error.details()))
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
