//! Container wrappers: the command line that runs a command inside an image
//! with the site's container runtime.
//!
//! The same wrapper serves two uses: every worker of a block in an image
//! (the launcher puts the wrapped worker command in each copy), and one
//! servable's process in its own image (the worker starts the wrapped
//! command). So a wrapper is built as an argument vector plus the variables
//! to set for the runtime, and the launcher's shell form is derived from it.
//!
//! Every runtime here shares the host's network (workers must dial the
//! daemon) and binds the directories the command needs at the same paths.

use crate::LaunchError;
use crate::shell;

/// A container runtime found on HPC systems or workstations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerRuntime {
    /// Apptainer (`apptainer exec`).
    Apptainer,
    /// SingularityCE or legacy Singularity (`singularity exec`).
    Singularity,
    /// NERSC's Shifter (`shifter --image=…`).
    Shifter,
    /// Podman (`podman run`), including wrappers such as `podman-hpc`.
    Podman,
    /// Docker (`docker run`).
    Docker,
    /// Charliecloud (`ch-run IMAGE -- …`), unprivileged and HPC-oriented.
    Charliecloud,
    /// A template of the site's own with `{image}`, `{binds}` and
    /// `{command}` placeholders.
    Custom,
}

impl ContainerRuntime {
    /// Every runtime, for listing in messages.
    pub const ALL: [ContainerRuntime; 7] = [
        ContainerRuntime::Apptainer,
        ContainerRuntime::Singularity,
        ContainerRuntime::Shifter,
        ContainerRuntime::Podman,
        ContainerRuntime::Docker,
        ContainerRuntime::Charliecloud,
        ContainerRuntime::Custom,
    ];

    /// The name used in site files and on the worker's command line.
    pub fn name(self) -> &'static str {
        match self {
            ContainerRuntime::Apptainer => "apptainer",
            ContainerRuntime::Singularity => "singularity",
            ContainerRuntime::Shifter => "shifter",
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Charliecloud => "charliecloud",
            ContainerRuntime::Custom => "custom",
        }
    }

    /// The runtime called `name`.
    pub fn from_name(name: &str) -> Option<ContainerRuntime> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The runtime's usual executable.
    pub fn default_command(self) -> &'static str {
        match self {
            ContainerRuntime::Apptainer => "apptainer",
            ContainerRuntime::Singularity => "singularity",
            ContainerRuntime::Shifter => "shifter",
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Charliecloud => "ch-run",
            ContainerRuntime::Custom => "sh",
        }
    }

    /// The prefix of variables the runtime copies into the container
    /// (`APPTAINERENV_X` becomes `X` inside), for runtimes that have one.
    fn env_prefix(self) -> Option<&'static str> {
        match self {
            ContainerRuntime::Apptainer => Some("APPTAINERENV_"),
            ContainerRuntime::Singularity => Some("SINGULARITYENV_"),
            _ => None,
        }
    }
}

/// Which GPUs to make visible inside the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Gpus {
    /// None.
    #[default]
    None,
    /// NVIDIA GPUs (`--nv`, CDI `nvidia.com/gpu=all`, `--gpus all`,
    /// Shifter's `gpu` module).
    Nvidia,
    /// AMD GPUs (`--rocm`, the `/dev/kfd` and `/dev/dri` devices).
    Amd,
}

impl Gpus {
    /// The name used in site files and on the worker's command line.
    pub fn name(self) -> &'static str {
        match self {
            Gpus::None => "none",
            Gpus::Nvidia => "nvidia",
            Gpus::Amd => "amd",
        }
    }

    /// The GPUs called `name`.
    pub fn from_name(name: &str) -> Option<Gpus> {
        [Gpus::None, Gpus::Nvidia, Gpus::Amd]
            .into_iter()
            .find(|g| g.name() == name)
    }
}

/// A host directory (or file) visible inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Path on the host.
    pub host: String,
    /// Path inside the container.
    pub container: String,
    /// Mounted read-only (where the runtime can express it).
    pub read_only: bool,
}

impl Bind {
    /// The same path inside and out.
    pub fn same(path: &str, read_only: bool) -> Bind {
        Bind {
            host: path.to_owned(),
            container: path.to_owned(),
            read_only,
        }
    }

    /// Parses `HOST[:CONTAINER[:ro|rw]]`.
    pub fn parse(text: &str) -> Result<Bind, LaunchError> {
        let bad = |why: &str| {
            LaunchError::Container(format!(
                "bind `{text}`: {why}; write HOST, HOST:CONTAINER or HOST:CONTAINER:ro"
            ))
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [h] => (*h, *h, false),
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [h, c, "rw"] => (*h, *c, false),
            [_, _, other] => return Err(bad(&format!("unknown mode `{other}`"))),
            _ => return Err(bad("too many `:`")),
        };
        if !host.starts_with('/') || !container.starts_with('/') {
            return Err(bad("paths must be absolute"));
        }
        Ok(Bind {
            host: host.to_owned(),
            container: container.to_owned(),
            read_only,
        })
    }

    fn spec(&self, ro_suffix: bool) -> String {
        let mut s = format!("{}:{}", self.host, self.container);
        if ro_suffix && self.read_only {
            s.push_str(":ro");
        }
        s
    }
}

/// An image and how to run things in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The runtime.
    pub runtime: ContainerRuntime,
    /// Image: a SIF file, a Shifter `docker:NAME:TAG`, a Podman/Docker
    /// reference, a Charliecloud image directory.
    pub image: String,
    /// The runtime's executable, when not the usual one (`podman-hpc`).
    pub command: Option<String>,
    /// Extra binds.
    pub binds: Vec<Bind>,
    /// Extra runtime options, placed before the image.
    pub options: Vec<String>,
    /// The node's GPUs to make visible.
    pub gpus: Gpus,
    /// The `custom` runtime's template.
    pub template: String,
}

/// A wrapped command: the variables to set for the runtime, then its argv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `(NAME, SOURCE)`: set `NAME` to the value of `SOURCE` before running
    /// the runtime (values never appear in argv).
    pub env: Vec<(String, String)>,
    /// The runtime's command line.
    pub argv: Vec<String>,
}

impl Invocation {
    /// Shell lines that set [`Invocation::env`] from the copy's variables.
    pub fn setup(&self) -> String {
        self.env
            .iter()
            .map(|(name, source)| format!("{name}=\"${{{source}:-}}\"; export {name}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The argv as one shell-quoted command line.
    pub fn command_line(&self) -> String {
        shell::join(&self.argv)
    }
}

/// What to run inside the container.
#[derive(Clone, Copy, Debug)]
pub struct Inner<'a> {
    /// The command and its arguments, as seen inside the container.
    pub command: &'a [String],
    /// Variables to carry in from the caller's environment.
    pub pass_env: &'a [&'a str],
    /// Working directory inside the container.
    pub workdir: Option<&'a str>,
    /// Keep stdin attached (servable processes talk over stdin/stdout).
    pub interactive: bool,
}

impl Container {
    /// The command line running `inner` in this container.
    pub fn invocation(&self, inner: Inner<'_>) -> Result<Invocation, LaunchError> {
        if inner.command.is_empty() {
            return Err(LaunchError::Container("nothing to run".into()));
        }
        if self.image.trim().is_empty() && self.runtime != ContainerRuntime::Custom {
            return Err(LaunchError::Container(format!(
                "the {} runtime needs an image",
                self.runtime.default_command()
            )));
        }
        let exe = self
            .command
            .clone()
            .unwrap_or_else(|| self.runtime.default_command().to_owned());
        let mut argv = vec![exe];
        let mut env = Vec::new();
        let words = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self.runtime {
            ContainerRuntime::Apptainer | ContainerRuntime::Singularity => {
                argv.push("exec".into());
                for b in &self.binds {
                    argv.extend(["--bind".into(), b.spec(true)]);
                }
                match self.gpus {
                    Gpus::Nvidia => argv.push("--nv".into()),
                    Gpus::Amd => argv.push("--rocm".into()),
                    Gpus::None => {}
                }
                if let Some(dir) = inner.workdir {
                    argv.extend(["--pwd".into(), dir.to_owned()]);
                }
                let prefix = self.runtime.env_prefix().unwrap_or_default();
                env.extend(
                    inner
                        .pass_env
                        .iter()
                        .map(|name| (format!("{prefix}{name}"), (*name).to_owned())),
                );
                argv.extend(self.options.iter().cloned());
                argv.push(self.image.clone());
                argv.extend(inner.command.iter().cloned());
            }
            ContainerRuntime::Shifter => {
                argv.push(format!("--image={}", self.image));
                for b in &self.binds {
                    argv.push(format!("--volume={}", b.spec(true)));
                }
                // NERSC's GPU module; AMD systems do not run Shifter.
                if self.gpus == Gpus::Nvidia {
                    argv.push("--module=gpu".into());
                }
                if let Some(dir) = inner.workdir {
                    argv.push(format!("--workdir={dir}"));
                }
                argv.extend(self.options.iter().cloned());
                argv.extend(inner.command.iter().cloned());
            }
            ContainerRuntime::Podman | ContainerRuntime::Docker => {
                // Host network: workers dial the daemon; host PID namespace:
                // the worker is not PID 1 (which ignores SIGTERM) and can
                // watch its daemon's pid.
                argv.extend(words(&["run", "--rm", "--network=host", "--pid=host"]));
                if inner.interactive {
                    argv.push("-i".into());
                }
                for b in &self.binds {
                    argv.extend(["-v".into(), b.spec(true)]);
                }
                for name in inner.pass_env {
                    argv.extend(["-e".into(), (*name).to_owned()]);
                }
                // NERSC's podman-hpc exposes the node's GPUs with its own
                // `--gpu` (its hooks), not through CDI.
                let podman_hpc = self
                    .command
                    .as_deref()
                    .is_some_and(|c| c.rsplit('/').next() == Some("podman-hpc"));
                match (self.gpus, self.runtime) {
                    (Gpus::Nvidia, ContainerRuntime::Docker) => {
                        argv.extend(words(&["--gpus", "all"]));
                    }
                    (Gpus::Nvidia, _) if podman_hpc => argv.push("--gpu".into()),
                    (Gpus::Nvidia, _) => argv.extend(words(&["--device", "nvidia.com/gpu=all"])),
                    (Gpus::Amd, _) => {
                        argv.extend(words(&["--device", "/dev/kfd", "--device", "/dev/dri"]));
                    }
                    (Gpus::None, _) => {}
                }
                if let Some(dir) = inner.workdir {
                    argv.extend(["-w".into(), dir.to_owned()]);
                }
                argv.extend(self.options.iter().cloned());
                argv.push(self.image.clone());
                argv.extend(inner.command.iter().cloned());
            }
            ContainerRuntime::Charliecloud => {
                // ch-run passes the caller's environment through and sees
                // the host's network; GPU libraries are injected into the
                // image beforehand (ch-fromhost), not at run time.
                for b in &self.binds {
                    argv.extend(["-b".into(), b.spec(false)]);
                }
                if let Some(dir) = inner.workdir {
                    argv.extend(["-c".into(), dir.to_owned()]);
                }
                argv.extend(self.options.iter().cloned());
                argv.push(self.image.clone());
                argv.push("--".into());
                argv.extend(inner.command.iter().cloned());
            }
            ContainerRuntime::Custom => {
                argv.extend(["-c".into(), self.expand_template(inner.command)?]);
            }
        }
        Ok(Invocation { env, argv })
    }

    fn expand_template(&self, command: &[String]) -> Result<String, LaunchError> {
        let template = self.template.trim();
        if !template.contains("{command}") {
            return Err(LaunchError::Container(
                "a custom runtime's template must contain {command}".into(),
            ));
        }
        let binds = self
            .binds
            .iter()
            .map(|b| b.spec(true))
            .collect::<Vec<_>>()
            .join(",");
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(len) = rest[open..].find('}') else {
                return Err(LaunchError::Container(format!(
                    "template `{template}`: `{{` without `}}`"
                )));
            };
            let name = &rest[open + 1..open + len];
            match name {
                "image" => out.push_str(&shell::quote(&self.image)),
                "binds" => out.push_str(&shell::quote(&binds)),
                "command" => out.push_str(&shell::join(command)),
                other => {
                    return Err(LaunchError::Container(format!(
                        "template `{template}`: unknown placeholder {{{other}}}; use {{image}}, {{binds}} or {{command}}"
                    )));
                }
            }
            rest = &rest[open + len + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(runtime: ContainerRuntime, image: &str) -> Container {
        Container {
            runtime,
            image: image.into(),
            command: None,
            binds: vec![
                Bind::parse("/opt/flotilla/host-bin:/opt/flotilla/bin:ro").unwrap(),
                Bind::same("/scratch/run", false),
            ],
            options: Vec::new(),
            gpus: Gpus::None,
            template: String::new(),
        }
    }

    fn worker() -> Vec<String> {
        [
            "/opt/flotilla/bin/flotilla-worker",
            "--address",
            "10.0.0.1,login1",
        ]
        .map(String::from)
        .to_vec()
    }

    fn inner<'a>(command: &'a [String], env: &'a [&'a str]) -> Inner<'a> {
        Inner {
            command,
            pass_env: env,
            workdir: None,
            interactive: false,
        }
    }

    #[test]
    fn apptainer_binds_forwards_env_and_adds_nv_for_gpus() {
        let mut c = container(ContainerRuntime::Apptainer, "/images/model.sif");
        c.gpus = Gpus::Nvidia;
        let cmd = worker();
        let inv = c.invocation(inner(&cmd, &["FLOTILLA_SECRET"])).unwrap();
        assert_eq!(
            inv.command_line(),
            "apptainer exec --bind /opt/flotilla/host-bin:/opt/flotilla/bin:ro --bind /scratch/run:/scratch/run --nv /images/model.sif /opt/flotilla/bin/flotilla-worker --address 10.0.0.1,login1"
        );
        assert_eq!(
            inv.env,
            [(
                "APPTAINERENV_FLOTILLA_SECRET".into(),
                "FLOTILLA_SECRET".into()
            )]
        );
        assert_eq!(
            inv.setup(),
            "APPTAINERENV_FLOTILLA_SECRET=\"${FLOTILLA_SECRET:-}\"; export APPTAINERENV_FLOTILLA_SECRET"
        );
    }

    #[test]
    fn singularity_uses_its_own_env_prefix_and_workdir() {
        let c = container(ContainerRuntime::Singularity, "docker://python:3.12");
        let cmd = worker();
        let mut i = inner(&cmd, &["FLOTILLA_WORKER_RANK"]);
        i.workdir = Some("/scratch/run");
        let inv = c.invocation(i).unwrap();
        assert!(inv.argv.starts_with(&["singularity".into(), "exec".into()]));
        assert!(
            inv.command_line()
                .contains("--pwd /scratch/run docker://python:3.12 ")
        );
        assert_eq!(inv.env[0].0, "SINGULARITYENV_FLOTILLA_WORKER_RANK");
    }

    #[test]
    fn shifter_takes_image_and_volumes_as_flags() {
        let mut c = container(ContainerRuntime::Shifter, "docker:nersc/flotilla:1.0");
        c.gpus = Gpus::Nvidia;
        let cmd = worker();
        let inv = c.invocation(inner(&cmd, &["FLOTILLA_SECRET"])).unwrap();
        assert_eq!(
            inv.command_line(),
            "shifter --image=docker:nersc/flotilla:1.0 --volume=/opt/flotilla/host-bin:/opt/flotilla/bin:ro --volume=/scratch/run:/scratch/run --module=gpu /opt/flotilla/bin/flotilla-worker --address 10.0.0.1,login1"
        );
        assert!(inv.env.is_empty(), "shifter passes the environment through");
    }

    #[test]
    fn podman_hpc_exposes_gpus_with_its_own_flag() {
        let cmd = worker();
        let mut c = container(ContainerRuntime::Podman, "myrepo/flotilla-models:1.0");
        c.gpus = Gpus::Nvidia;
        c.command = Some("podman-hpc".into());
        let line = c.invocation(inner(&cmd, &[])).unwrap().command_line();
        assert!(line.starts_with("podman-hpc run "), "{line}");
        assert!(line.contains(" --gpu "), "{line}");
        assert!(!line.contains("nvidia.com/gpu"), "{line}");
        c.command = Some("podman".into());
        let line = c.invocation(inner(&cmd, &[])).unwrap().command_line();
        assert!(line.contains("--device nvidia.com/gpu=all"), "{line}");
    }

    #[test]
    fn podman_and_docker_run_on_the_host_network_with_env_by_name() {
        let cmd = worker();
        let c = container(ContainerRuntime::Podman, "localhost/flotilla:test");
        let inv = c
            .invocation(inner(&cmd, &["FLOTILLA_SECRET", "FLOTILLA_WORKER_RANK"]))
            .unwrap();
        assert_eq!(
            inv.command_line(),
            "podman run --rm --network=host --pid=host -v /opt/flotilla/host-bin:/opt/flotilla/bin:ro -v /scratch/run:/scratch/run -e FLOTILLA_SECRET -e FLOTILLA_WORKER_RANK localhost/flotilla:test /opt/flotilla/bin/flotilla-worker --address 10.0.0.1,login1"
        );
        assert!(!inv.command_line().contains("--gpus"));

        let mut c = container(ContainerRuntime::Docker, "flotilla:1");
        c.gpus = Gpus::Nvidia;
        c.options = vec!["--shm-size=1g".into()];
        let mut i = inner(&cmd, &[]);
        i.interactive = true;
        i.workdir = Some("/work");
        let line = c.invocation(i).unwrap().command_line();
        assert!(
            line.starts_with("docker run --rm --network=host --pid=host -i -v "),
            "{line}"
        );
        assert!(
            line.contains(" --gpus all -w /work --shm-size=1g flotilla:1 "),
            "{line}"
        );
    }

    #[test]
    fn charliecloud_puts_the_command_after_a_double_dash() {
        let c = container(ContainerRuntime::Charliecloud, "/var/tmp/images/flotilla");
        let cmd = worker();
        let inv = c.invocation(inner(&cmd, &["FLOTILLA_SECRET"])).unwrap();
        assert_eq!(
            inv.command_line(),
            "ch-run -b /opt/flotilla/host-bin:/opt/flotilla/bin -b /scratch/run:/scratch/run /var/tmp/images/flotilla -- /opt/flotilla/bin/flotilla-worker --address 10.0.0.1,login1"
        );
    }

    #[test]
    fn custom_templates_fill_placeholders_and_reject_unknown_ones() {
        let mut c = container(ContainerRuntime::Custom, "my image");
        c.template = "enroot start --mount {binds} {image} {command}".into();
        let cmd = worker();
        let inv = c.invocation(inner(&cmd, &[])).unwrap();
        assert_eq!(inv.argv[..2], ["sh".to_owned(), "-c".to_owned()]);
        assert_eq!(
            inv.argv[2],
            "enroot start --mount /opt/flotilla/host-bin:/opt/flotilla/bin:ro,/scratch/run:/scratch/run 'my image' /opt/flotilla/bin/flotilla-worker --address 10.0.0.1,login1"
        );
        c.template = "run {img} {command}".into();
        let err = c.invocation(inner(&cmd, &[])).unwrap_err().to_string();
        assert!(err.contains("unknown placeholder {img}"), "{err}");
        c.template = "run {image}".into();
        assert!(c.invocation(inner(&cmd, &[])).is_err());
    }

    #[test]
    fn a_custom_template_runs_for_real() {
        let mut c = container(ContainerRuntime::Custom, "");
        c.template = "env IN_CONTAINER=1 {command}".into();
        let cmd = ["sh", "-c", "echo inside=$IN_CONTAINER"].map(String::from);
        let inv = c.invocation(inner(&cmd, &[])).unwrap();
        let out = std::process::Command::new(&inv.argv[0])
            .args(&inv.argv[1..])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "inside=1\n");
    }

    #[test]
    fn amd_gpus_get_rocm_and_their_devices() {
        let cmd = worker();
        let mut c = container(ContainerRuntime::Apptainer, "/images/m.sif");
        c.gpus = Gpus::Amd;
        let line = c.invocation(inner(&cmd, &[])).unwrap().command_line();
        assert!(line.contains(" --rocm /images/m.sif "), "{line}");
        c.runtime = ContainerRuntime::Podman;
        let line = c.invocation(inner(&cmd, &[])).unwrap().command_line();
        assert!(
            line.contains("--device /dev/kfd --device /dev/dri /images/m.sif"),
            "{line}"
        );
        assert_eq!(Gpus::from_name("amd"), Some(Gpus::Amd));
        assert_eq!(Gpus::from_name("intel"), None);
    }

    #[test]
    fn names_round_trip() {
        for r in ContainerRuntime::ALL {
            assert_eq!(ContainerRuntime::from_name(r.name()), Some(r));
        }
        assert_eq!(ContainerRuntime::from_name("lxc"), None);
    }

    #[test]
    fn binds_parse_strictly() {
        assert_eq!(Bind::parse("/a").unwrap(), Bind::same("/a", false));
        assert!(Bind::parse("/a:/b:ro").unwrap().read_only);
        for bad in ["a:/b", "/a:/b:rx", "/a:/b:ro:x", "/a:b"] {
            let err = Bind::parse(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("bind `{bad}`")), "{err}");
        }
    }

    #[test]
    fn an_image_is_required() {
        let c = container(ContainerRuntime::Podman, " ");
        let cmd = worker();
        let err = c.invocation(inner(&cmd, &[])).unwrap_err().to_string();
        assert!(err.contains("the podman runtime needs an image"), "{err}");
    }
}
