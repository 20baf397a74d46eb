//! The daemon's half of the hand-over, written once: one driver ([`run`]) that takes a
//! daemon from its turn to its exit, over the supervisor's commands (`ACQUIRE`, `RELEASE`,
//! `RESUME`, see [`crate::readiness`]), the stop signals and the gRPC server ending. A
//! daemon gives it a [`Tenant`] (its sled tree and what serves from it) and a
//! [`DataPlane`] (what serves without the tree).
//!
//! Named phases, in order:
//! 1. **signals**: SIGTERM becomes a graceful, SIGINT a fast shutdown request;
//! 2. **turn**: under the supervisor, `PREPARED=1`, then wait for `ACQUIRE`; standalone,
//!    at once. A shutdown request (or the supervisor gone) meanwhile: exit, nothing served;
//! 3. **open**: the first tenure ([`Tenant::open`]). A shutdown request meanwhile
//!    abandons it: exit, nothing served; a failure exits with the error;
//! 4. **start**: the gRPC socket (inherited, or bound standalone: only now, so a second
//!    instance run by hand waits for the tree first), the data plane, the gRPC server
//!    (the tenant's services, `DaemonControl`, health, reflection); then, once the data
//!    plane answers, `READY=1` with the tenant's status line;
//! 5. **serve**, until something below happens. In state *serving* (tree held, gRPC up):
//!    - `RELEASE` → **release**: the tenant's `ending`, gRPC stops gracefully (calls in
//!      flight finish, bounded by the grace period; a fast request cuts them), the tree
//!      closes, `RELEASED=1`; state *released* (the data plane serves on from memory).
//!      A fast stop cutting the close short sends no `RELEASED=1`;
//!
//!    In state *released* (no tree, no gRPC):
//!    - `RESUME` → **resume**: the open again (a shutdown request meanwhile abandons it
//!      and stops), gRPC again on the same socket, `READY=1`; state *serving*;
//!
//!    In either state (a command that does not fit the state is ignored):
//!    - a shutdown request (SIGTERM/SIGINT, `Drain`, the supervisor gone) → **stop** of
//!      that kind, exit 0;
//!    - the data plane or the gRPC server ending by itself → fast **stop**, exit with the
//!      error;
//!    - a failed release or resume → graceful **stop**, exit with the error;
//! 6. **stop**: `STOPPING=1`; the data plane stops (graceful: drains until the grace
//!    period ends or a fast request); if serving, the tenant's `ending`, gRPC stops (same
//!    deadline; fast: at once) and the tree closes.
//!
//! Under the supervisor, the driver also reports where it is, as `PHASE=` lines
//! ([`DaemonPhase`]): `opening` (open, also to resume), `serving` (before `READY=1`),
//! `releasing` and `released` (before `RELEASED=1`), `resuming`, `stopping` (before
//! `STOPPING=1`, with "graceful" or "fast"), `drained` (the data plane has stopped) and,
//! after its turn came, `stopped` (with the error, if it ends with one) however it ends.

#[cfg(test)]
mod tests;

use std::os::unix::net::UnixListener;

use tokio::time::Instant;
use tonic::service::Routes;

use crate::control::ControlService;
use crate::daemon::{Daemon, StartError};
use crate::readiness::{Command, DaemonPhase};
use crate::rpc::RpcServer;
use crate::shutdown::{Shutdown, ShutdownKind};
use crate::tenure::{Answering, BoxError, CloseError, DataPlane, Tenant};

/// Why a daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// SIGTERM/SIGINT could not be watched.
    #[error("cannot watch SIGTERM/SIGINT")]
    Signals(#[source] std::io::Error),
    /// The first tenure could not be opened.
    #[error("cannot open the sled tree")]
    Open(#[source] BoxError),
    /// The gRPC socket could not be taken, bound or shared.
    #[error("cannot use the gRPC socket")]
    GrpcSocket(#[source] StartError),
    /// The data plane could not start, or does not answer.
    #[error("cannot start serving")]
    Start(#[source] BoxError),
    /// The data plane failed by itself.
    #[error("stopped serving")]
    DataPlane(#[source] BoxError),
    /// The gRPC server ended by itself.
    #[error("gRPC server stopped: {0}")]
    GrpcEnded(String),
    /// The tree could not be released for a hand-over.
    #[error("cannot release the sled tree")]
    Release(#[source] BoxError),
    /// The tree could not be taken back after a failed hand-over.
    #[error("cannot resume after a failed hand-over")]
    Resume(#[source] BoxError),
    /// The tree could not be closed at the stop.
    #[error("cannot close the sled tree")]
    Close(#[source] BoxError),
}

/// Runs the daemon from its turn to its exit (see the module docs). Call inside a tokio
/// runtime with timers and IO; `Ok` is a clean exit.
pub async fn run<T: Tenant, P: DataPlane>(
    daemon: &mut Daemon,
    tenant: &mut T,
    plane: &mut P,
) -> Result<(), RunError> {
    // Phase: signals.
    daemon.shutdown.watch_signals().map_err(RunError::Signals)?;
    // Phase: turn.
    if !daemon.await_turn().await {
        tracing::info!("asked to stop before our turn; exiting without serving");
        return Ok(());
    }
    let mut listeners = plane.listeners();
    listeners.push(format!("unix://{}", daemon.socket_path().display()));
    let control = daemon.control_service(listeners);
    let mut driver = Driver {
        daemon,
        tenant,
        plane,
        control,
        listener: None,
    };
    let result = driver.run().await;
    let detail = match &result {
        Ok(()) => String::new(),
        Err(e) => Chain(e).to_string(),
    };
    driver.daemon.phase(DaemonPhase::Stopped, detail);
    result
}

/// The state between two events.
enum State<U> {
    /// Holding the tree; gRPC serves from it.
    Serving {
        /// The tenure.
        tenure: U,
        /// The gRPC server over it.
        grpc: RpcServer,
    },
    /// The tree released (or its release cut short): no gRPC; the data plane serves on.
    Released,
}

/// What wakes the serving loop.
enum Event {
    /// The data plane failed by itself.
    Failed(BoxError),
    /// A shutdown request.
    Shutdown(ShutdownKind),
    /// The gRPC server ended by itself.
    GrpcEnded(String),
    /// The data plane answers (or cannot).
    Answered(Result<(), BoxError>),
    /// The supervisor's command.
    Command(Command),
}

/// How an opening ended.
enum Opening<U> {
    Opened(U),
    /// A shutdown request came first.
    Stopped,
    Failed(BoxError),
}

struct Driver<'a, T, P> {
    daemon: &'a mut Daemon,
    tenant: &'a mut T,
    plane: &'a mut P,
    control: ControlService,
    /// The gRPC socket, taken at the start; each gRPC server runs on a copy.
    listener: Option<UnixListener>,
}

impl<T: Tenant, P: DataPlane> Driver<'_, T, P> {
    fn shutdown(&self) -> Shutdown {
        self.daemon.shutdown.clone()
    }

    /// The phases from open to the end of stop.
    async fn run(&mut self) -> Result<(), RunError> {
        // Phase: open.
        let tenure = match self.open().await {
            Opening::Opened(tenure) => tenure,
            Opening::Stopped => return Ok(()),
            Opening::Failed(e) => return Err(RunError::Open(e)),
        };
        // Phase: start.
        let (state, answering) = self.start(tenure).await?;
        // Phases: serve, release, resume, stop.
        self.serve(state, Some(answering)).await
    }

    /// Opens a tenure unless a shutdown request comes first.
    async fn open(&mut self) -> Opening<T::Tenure> {
        self.daemon.phase(DaemonPhase::Opening, "");
        let shutdown = self.shutdown();
        tokio::select! {
            biased;
            kind = shutdown.wait() => {
                tracing::info!(?kind, "asked to stop while opening the sled tree");
                Opening::Stopped
            }
            opened = self.tenant.open() => match opened {
                Ok(tenure) => Opening::Opened(tenure),
                Err(e) => Opening::Failed(e),
            },
        }
    }

    /// Phase start: the gRPC socket, the gRPC server, the data plane. A failure closes
    /// the tenure first.
    async fn start(
        &mut self,
        tenure: T::Tenure,
    ) -> Result<(State<T::Tenure>, Answering), RunError> {
        let grpc = self
            .daemon
            .grpc_listener()
            .and_then(|listener| self.start_grpc(listener, &tenure));
        let grpc = match grpc {
            Ok(grpc) => grpc,
            Err(e) => return Err(self.abandon(tenure, RunError::GrpcSocket(e)).await),
        };
        match self.plane.start() {
            Ok(answering) => Ok((State::Serving { tenure, grpc }, answering)),
            Err(e) => {
                grpc.abort();
                Err(self.abandon(tenure, RunError::Start(e)).await)
            }
        }
    }

    /// Keeps `listener` and serves `tenure`'s services on a copy of it.
    fn start_grpc(
        &mut self,
        listener: UnixListener,
        tenure: &T::Tenure,
    ) -> Result<RpcServer, StartError> {
        let listener = self.listener.insert(listener);
        let serving = listener.try_clone().map_err(|reason| StartError::Socket {
            what: "sharing the gRPC socket".into(),
            reason,
        })?;
        let routes = self
            .tenant
            .routes(tenure)
            .add_service(self.control.clone().into_server());
        Ok(RpcServer::start(serving, routes))
    }

    /// Serves `tenure` again on the kept socket (after a `RESUME`).
    fn restart_grpc(&mut self, tenure: &T::Tenure) -> Result<RpcServer, StartError> {
        let kept = self.listener.as_ref().map(UnixListener::try_clone);
        let listener = match kept {
            Some(Ok(listener)) => listener,
            Some(Err(reason)) => {
                return Err(StartError::Socket {
                    what: "sharing the gRPC socket".into(),
                    reason,
                });
            }
            None => self.daemon.grpc_listener()?,
        };
        let routes: Routes = self
            .tenant
            .routes(tenure)
            .add_service(self.control.clone().into_server());
        Ok(RpcServer::start(listener, routes))
    }

    /// `READY=1` with the tenant's status line.
    fn ready(&self, tenure: &T::Tenure) {
        let status = self.tenant.status(tenure);
        tracing::info!("ready: {status}");
        self.daemon.phase(DaemonPhase::Serving, "");
        self.daemon.ready(status);
    }

    /// Closes a tenure that cannot be served, and returns why.
    async fn abandon(&mut self, tenure: T::Tenure, why: RunError) -> RunError {
        if let Err(CloseError::Failed(e)) = self.tenant.close(tenure, std::future::pending()).await
        {
            tracing::error!("{}", Chain(&RunError::Close(e)));
        }
        why
    }

    /// Phase serve: one event at a time until the stop. While the data plane has not
    /// answered yet, `READY=1` is not sent and commands wait.
    async fn serve(
        &mut self,
        mut state: State<T::Tenure>,
        mut answering: Option<Answering>,
    ) -> Result<(), RunError> {
        loop {
            let event = self.next_event(&mut state, &mut answering).await;
            state = match (event, state) {
                (Event::Shutdown(kind), state) => return self.stop(kind, state, None).await,
                (Event::Failed(e), state) => {
                    return self
                        .fail(ShutdownKind::Fast, state, RunError::DataPlane(e))
                        .await;
                }
                (Event::GrpcEnded(why), state) => {
                    return self
                        .fail(ShutdownKind::Fast, state, RunError::GrpcEnded(why))
                        .await;
                }
                (Event::Answered(Err(e)), state) => {
                    return self
                        .fail(ShutdownKind::Fast, state, RunError::Start(e))
                        .await;
                }
                (Event::Answered(Ok(())), state) => {
                    answering = None;
                    if let State::Serving { tenure, .. } = &state {
                        self.ready(tenure);
                    }
                    state
                }
                (Event::Command(Command::Release), State::Serving { tenure, grpc }) => {
                    match self.release(tenure, grpc).await {
                        Ok(()) => State::Released,
                        Err(e) => {
                            return self.fail(ShutdownKind::Graceful, State::Released, e).await;
                        }
                    }
                }
                (Event::Command(Command::Resume), State::Released) => match self.resume().await {
                    Opening::Opened(serving) => serving,
                    Opening::Stopped => {
                        let kind = self.shutdown().requested().unwrap_or(ShutdownKind::Fast);
                        return self.stop(kind, State::Released, None).await;
                    }
                    Opening::Failed(e) => {
                        let e = RunError::Resume(e);
                        return self.fail(ShutdownKind::Graceful, State::Released, e).await;
                    }
                },
                (Event::Command(command), state) => {
                    let held = match state {
                        State::Serving { .. } => "serving",
                        State::Released => "released",
                    };
                    tracing::warn!(?command, "ignored: the sled tree is {held}");
                    state
                }
            };
        }
    }

    /// Waits for the next event: the data plane failing comes first (it is reported
    /// before its sockets close, so what follows from them comes second).
    async fn next_event(
        &mut self,
        state: &mut State<T::Tenure>,
        answering: &mut Option<Answering>,
    ) -> Event {
        let shutdown = self.shutdown();
        let before_ready = answering.is_some();
        let grpc_ended = async {
            match state {
                State::Serving { grpc, .. } => grpc.ended().await,
                State::Released => std::future::pending().await,
            }
        };
        let answered = async {
            match answering {
                Some(answering) => answering.await,
                None => std::future::pending().await,
            }
        };
        let daemon = &*self.daemon;
        let command = async {
            if before_ready {
                std::future::pending().await
            } else {
                daemon.next_command().await
            }
        };
        tokio::select! {
            biased;
            e = self.plane.failed() => Event::Failed(e),
            kind = shutdown.wait() => Event::Shutdown(kind),
            why = grpc_ended => Event::GrpcEnded(why),
            answered = answered => Event::Answered(answered),
            command = command => Event::Command(command),
        }
    }

    /// Phase release: gRPC stops gracefully, the tree closes, `RELEASED=1`.
    async fn release(&mut self, tenure: T::Tenure, grpc: RpcServer) -> Result<(), RunError> {
        tracing::info!(
            calls = grpc.calls_in_flight(),
            "releasing the sled tree: stopping gRPC"
        );
        self.daemon.phase(DaemonPhase::Releasing, "");
        let shutdown = self.shutdown();
        let deadline = Instant::now() + self.daemon.settings.grace_period();
        self.tenant.ending(&tenure);
        stop_grpc(grpc, ShutdownKind::Graceful, &shutdown, deadline).await;
        match self.tenant.close(tenure, shutdown.wait_fast()).await {
            Ok(()) => {
                tracing::info!("released the sled tree; serving on without it");
                self.daemon.phase(DaemonPhase::Released, "");
                self.daemon.released();
                Ok(())
            }
            Err(CloseError::CutShort) => {
                tracing::info!("the release was cut short by a fast stop");
                Ok(())
            }
            Err(CloseError::Failed(e)) => Err(RunError::Release(e)),
        }
    }

    /// Phase resume: the tree again, gRPC again, `READY=1`.
    async fn resume(&mut self) -> Opening<State<T::Tenure>> {
        tracing::info!("resuming after a failed hand-over: reopening the sled tree");
        self.daemon.phase(DaemonPhase::Resuming, "");
        let tenure = match self.open().await {
            Opening::Opened(tenure) => tenure,
            Opening::Stopped => return Opening::Stopped,
            Opening::Failed(e) => return Opening::Failed(e),
        };
        match self.restart_grpc(&tenure) {
            Ok(grpc) => {
                self.ready(&tenure);
                Opening::Opened(State::Serving { tenure, grpc })
            }
            Err(e) => Opening::Failed(self.abandon(tenure, RunError::GrpcSocket(e)).await.into()),
        }
    }

    /// A failure: stop (graceful after a failed hand-over step, so the data plane still
    /// finishes its work; fast otherwise) and exit with the error.
    async fn fail(
        &mut self,
        kind: ShutdownKind,
        state: State<T::Tenure>,
        failure: RunError,
    ) -> Result<(), RunError> {
        tracing::error!("{}; stopping", Chain(&failure));
        self.daemon.shutdown.request(kind);
        let kind = self.daemon.shutdown.requested().unwrap_or(kind);
        self.stop(kind, state, Some(failure)).await
    }

    /// Phase stop: `STOPPING=1`, the data plane, then gRPC and the tree if held.
    async fn stop(
        &mut self,
        kind: ShutdownKind,
        state: State<T::Tenure>,
        mut failure: Option<RunError>,
    ) -> Result<(), RunError> {
        let shutdown = self.shutdown();
        self.daemon.phase(DaemonPhase::Stopping, kind_name(kind));
        self.daemon.stopping();
        tracing::info!(?kind, "stopping");
        let deadline = Instant::now() + self.daemon.settings.grace_period();
        self.plane.stop(kind, deadline, shutdown.wait_fast()).await;
        self.daemon.phase(DaemonPhase::Drained, "");
        if let State::Serving { tenure, grpc } = state {
            self.tenant.ending(&tenure);
            stop_grpc(grpc, kind, &shutdown, deadline).await;
            let cut_short = async {
                if kind == ShutdownKind::Graceful {
                    shutdown.wait_fast().await;
                }
            };
            match self.tenant.close(tenure, cut_short).await {
                Ok(()) => {}
                Err(CloseError::CutShort) => tracing::info!("closing the sled tree was cut short"),
                Err(CloseError::Failed(e)) => {
                    let e = RunError::Close(e);
                    tracing::error!("{}", Chain(&e));
                    failure.get_or_insert(e);
                }
            }
        }
        if failure.is_none() {
            tracing::info!("stopped");
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Stops a gRPC server: graceful (calls in flight finish, until `deadline`; a fast request
/// meanwhile cuts them) unless the stop is fast or a fast request has come.
async fn stop_grpc(grpc: RpcServer, kind: ShutdownKind, shutdown: &Shutdown, deadline: Instant) {
    if kind == ShutdownKind::Fast || shutdown.requested() == Some(ShutdownKind::Fast) {
        grpc.abort();
        return;
    }
    tracing::info!(calls = grpc.calls_in_flight(), "stopping gRPC");
    grpc.stop_within(deadline, shutdown.wait_fast()).await;
}

/// "graceful" or "fast", for the stopping phase.
fn kind_name(kind: ShutdownKind) -> &'static str {
    match kind {
        ShutdownKind::Graceful => "graceful",
        ShutdownKind::Fast => "fast",
    }
}

/// An error with its sources, `: `-separated, for the log and the stopped phase.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
