//! A blocking CRI (Kubernetes Container Runtime Interface, `runtime.v1`) client for the containerd tests: the
//! `k8s-cri` gRPC bindings over containerd's unix socket, driven by a private single-threaded tokio runtime so
//! tests stay plain synchronous code. Only the calls the tests need have helpers; [`Cri::runtime`] and
//! [`Cri::images`] give the raw clients for the rest.
//!
//! Everything returned comes from containerd and the runtime under test: errors are kept as text
//! (`tonic::Status` code and message) for the test to assert on, never unwrapped here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStats, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatus, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// A CRI call's failure: which call, and the gRPC status (or transport error) as text.
#[derive(Clone, Debug)]
pub struct CriError {
    pub call: &'static str,
    pub message: String,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CRI {}: {}", self.call, self.message)
    }
}

impl std::error::Error for CriError {}

pub type CriResult<T> = Result<T, CriError>;

fn err(call: &'static str) -> impl Fn(tonic::Status) -> CriError {
    move |s| CriError {
        call,
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

/// How a pod sandbox is networked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// Its own network namespace, set up by CNI (needs containerd started with a CNI network).
    Cni,
    /// The host's (here: containerd's) network namespace (`hostNetwork: true`).
    Host,
}

/// A pod sandbox the client started: its id and the config it was created with (CreateContainer needs it).
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

/// The result of ExecSync.
#[derive(Clone, Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A connected CRI client.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    log_dir: PathBuf,
}

impl Cri {
    /// Connects to the CRI service on containerd's gRPC socket. Pod logs go under `log_dir`.
    pub fn connect(socket: &Path, log_dir: &Path) -> CriResult<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CriError {
                call: "connect",
                message: format!("tokio runtime: {e}"),
            })?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic but unused: the connector always dials the unix socket.
                Endpoint::try_from("http://[::]:0")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                    }))
                    .await
            })
            .map_err(|e| CriError {
                call: "connect",
                message: format!("{}: {e}", socket.display()),
            })?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// The raw runtime service client and the runtime to drive it: `cri.block_on(cri.runtime().status(...))`.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    /// The raw image service client.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn version(&self) -> CriResult<VersionResponse> {
        let mut c = self.runtime();
        self.block_on(c.version(VersionRequest::default()))
            .map(|r| r.into_inner())
            .map_err(err("Version"))
    }

    /// Status with `verbose`: the `info` map (containerd puts its effective CRI config, as JSON, under
    /// `config`, runtime handlers and their options included).
    pub fn status_info(&self) -> CriResult<HashMap<String, String>> {
        let mut c = self.runtime();
        self.block_on(c.status(k8s_cri::v1::StatusRequest { verbose: true }))
            .map(|r| r.into_inner().info)
            .map_err(err("Status"))
    }

    /// Whether containerd's CRI image store knows `image` (e.g. right after `ctr -n k8s.io image import`).
    pub fn image_present(&self, image: &str) -> CriResult<bool> {
        let mut c = self.images();
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.block_on(c.image_status(req))
            .map(|r| r.into_inner().image.is_some())
            .map_err(err("ImageStatus"))
    }

    /// Waits (up to `timeout`) until the CRI image store knows `image`.
    pub fn wait_image(&self, image: &str, timeout: Duration) -> CriResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.image_present(image)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CriError {
                    call: "ImageStatus",
                    message: format!("{image} not known to CRI after {timeout:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sandbox config [`Cri::run_pod_sandbox`] uses: metadata from `name`, logs under the client's log dir,
    /// and for [`PodNetwork::Host`] the node's network namespace. Change it and pass it to
    /// [`Cri::run_pod_sandbox_with`] for anything else (annotations, resources...).
    pub fn pod_config(&self, name: &str, network: PodNetwork) -> PodSandboxConfig {
        let log_directory = self.log_dir.join(name);
        let _ = std::fs::create_dir_all(&log_directory);
        let mode = match network {
            PodNetwork::Cni => NamespaceMode::Pod,
            PodNetwork::Host => NamespaceMode::Node,
        };
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "hull-test".to_string(),
                attempt: 0,
            }),
            // A host-network pod has the node's UTS namespace too, so no hostname of its own (as kubelet does).
            hostname: match network {
                PodNetwork::Cni => name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(63)
                    .collect(),
                PodNetwork::Host => String::new(),
            },
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: mode as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            labels: HashMap::from([("hull-test".to_string(), "1".to_string())]),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the runtime handler `handler` (`runc`, `hull`) and [`Cri::pod_config`].
    pub fn run_pod_sandbox(&self, handler: &str, name: &str, network: PodNetwork) -> CriResult<Pod> {
        self.run_pod_sandbox_with(handler, self.pod_config(name, network))
    }

    /// RunPodSandbox with an explicit config.
    pub fn run_pod_sandbox_with(&self, handler: &str, config: PodSandboxConfig) -> CriResult<Pod> {
        let mut c = self.runtime();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let id = self
            .block_on(c.run_pod_sandbox(req))
            .map_err(err("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { id, config })
    }

    pub fn pod_sandbox_status(&self, pod_id: &str) -> CriResult<PodSandboxStatus> {
        let mut c = self.runtime();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.to_string(),
            verbose: false,
        };
        self.block_on(c.pod_sandbox_status(req))
            .map_err(err("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or(CriError {
                call: "PodSandboxStatus",
                message: "no status in the answer".into(),
            })
    }

    /// The pod's IP (empty for host-network pods).
    pub fn pod_ip(&self, pod_id: &str) -> CriResult<String> {
        Ok(self
            .pod_sandbox_status(pod_id)?
            .network
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// The container config [`Cri::create_container`] uses: `image` with `command` (empty: the image's Cmd),
    /// logs to `<name>.log` in the pod's log directory.
    pub fn container_config(&self, name: &str, image: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// CreateContainer in `pod`; returns the container id.
    pub fn create_container(&self, pod: &Pod, name: &str, image: &str, command: &[&str]) -> CriResult<String> {
        self.create_container_with(pod, self.container_config(name, image, command))
    }

    /// CreateContainer with an explicit container config.
    pub fn create_container_with(&self, pod: &Pod, config: ContainerConfig) -> CriResult<String> {
        let mut c = self.runtime();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self
            .block_on(c.create_container(req))
            .map_err(err("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let req = StartContainerRequest {
            container_id: id.to_string(),
        };
        self.block_on(c.start_container(req)).map_err(err("StartContainer"))?;
        Ok(())
    }

    /// ExecSync `cmd` in container `id`; `timeout` 0 means none.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> CriResult<ExecOutput> {
        let mut c = self.runtime();
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.block_on(c.exec_sync(req)).map_err(err("ExecSync"))?.into_inner();
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    pub fn container_stats(&self, id: &str) -> CriResult<ContainerStats> {
        let mut c = self.runtime();
        let req = ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.block_on(c.container_stats(req))
            .map_err(err("ContainerStats"))?
            .into_inner()
            .stats
            .ok_or(CriError {
                call: "ContainerStats",
                message: "no stats in the answer".into(),
            })
    }

    pub fn container_status(&self, id: &str) -> CriResult<ContainerStatus> {
        let mut c = self.runtime();
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.block_on(c.container_status(req))
            .map_err(err("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or(CriError {
                call: "ContainerStatus",
                message: "no status in the answer".into(),
            })
    }

    /// StopContainer with a grace period of `timeout` (then SIGKILL).
    pub fn stop_container(&self, id: &str, timeout: Duration) -> CriResult<()> {
        let mut c = self.runtime();
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout.as_secs() as i64,
        };
        self.block_on(c.stop_container(req)).map_err(err("StopContainer"))?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.block_on(c.remove_container(req)).map_err(err("RemoveContainer"))?;
        Ok(())
    }

    pub fn stop_pod_sandbox(&self, pod_id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.block_on(c.stop_pod_sandbox(req)).map_err(err("StopPodSandbox"))?;
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, pod_id: &str) -> CriResult<()> {
        let mut c = self.runtime();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.block_on(c.remove_pod_sandbox(req))
            .map_err(err("RemovePodSandbox"))?;
        Ok(())
    }
}
