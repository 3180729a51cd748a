//! The launch contract renders and parses back to the same options.

#![allow(clippy::unwrap_used)]

use super::*;

/// Renders `args` as the daemon does, then parses it as the worker does.
fn round_trip(args: &WorkerArgs) -> WorkerArgs {
    let env = args.to_env();
    WorkerArgs::parse(args.to_argv(), |name| env.get(name).cloned()).unwrap()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// What a provider's block job says.
fn block_job() -> WorkerArgs {
    WorkerArgs {
        address: Some("10.0.0.1,login1:7000".into()),
        port: Some(5555),
        block_id: Some(3),
        lost_daemon_exit_s: Some(60.0),
        connect_timeout_s: Some(10.0),
        slots: Some(4),
        walltime_margin_s: Some(90.0),
        secret_hex: Some("00ff".repeat(16)),
        objects_dir: Some("/home/me/.flotilla/objects".into()),
        exit_with_pid: Some(4242),
        ..WorkerArgs::default()
    }
}

#[test]
fn options_round_trip_through_argv_and_env() {
    let everything = WorkerArgs {
        address: Some("[fd00::5]:7000,login 1".into()),
        port: Some(1),
        state_dir: Some("/tmp/state dir".into()),
        secret_file: Some("/tmp/secret".into()),
        objects_dir: Some("/tmp/objects".into()),
        cache_dir: Some("/local scratch/cache".into()),
        python: Some("/opt/python 3/bin/python3".into()),
        warm_memory_mb: Some(4096),
        onnx_threads: Some(3),
        onnx_session: Some("worker".into()),
        block_id: Some(0),
        slots: Some(1),
        worker_id: Some("w=1".into()),
        lost_daemon_exit_s: Some(0.1),
        connect_timeout_s: Some(1e-3),
        job_end: Some(1_800_000_000),
        walltime_margin_s: Some(0.0),
        container_runtime: Some("podman".into()),
        container_command: Some("/usr/bin/podman".into()),
        container_binds: vec!["/scratch".into(), "/data:/d:ro".into()],
        container_options: vec!["--security-opt=label=disable".into(), "-q".into()],
        container_template: Some("{runtime} run {image} {command}".into()),
        gpus: Some("nvidia".into()),
        accelerators: vec!["0.0".into(), "0.1".into(), "5.1".into()],
        accelerator_kind: Some("intel".into()),
        cpu_affinity: Some("list:1-51:53-103".into()),
        max_frame_bytes: Some(128 << 20),
        secret_hex: Some("ab".repeat(32)),
        exit_with_pid: Some(1),
        rank: Some(7),
        node: Some("nid001".into()),
    };
    for args in [
        WorkerArgs::default(),
        block_job(),
        WorkerArgs {
            exit_with_pid: None,
            walltime_margin_s: None,
            slots: None,
            ..block_job()
        },
        everything,
    ] {
        assert_eq!(round_trip(&args), args);
    }
    assert!(WorkerArgs::default().to_argv().is_empty());
    assert!(WorkerArgs::default().to_env().is_empty());
}

#[test]
fn a_block_job_renders_as_the_worker_expects() {
    let args = block_job();
    assert_eq!(
        args.to_argv().join(" "),
        "--address 10.0.0.1,login1:7000 --port 5555 --block-id 3 --lost-daemon-exit-s 60 \
         --connect-timeout-s 10 --slots 4 --walltime-margin-s 90"
    );
    let env = args.to_env();
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        [EXIT_WITH_PID_ENV, OBJECTS_ENV, SECRET_ENV],
        "the secret goes in the environment, never on the command line"
    );
    let options = WorkerArgs {
        container_options: vec!["--net=none".into()],
        ..WorkerArgs::default()
    };
    assert_eq!(options.to_argv(), ["--container-option=--net=none"]);
}

#[test]
fn the_command_line_wins_over_the_environment() {
    let env = BTreeMap::from([
        (DAEMON_ADDRESS_ENV, "10.0.0.9"),
        (DAEMON_PORT_ENV, "7000"),
        (HOME_ENV, "/home/me/.flotilla"),
        (OBJECTS_ENV, "/objects"),
        (CACHE_DIR_ENV, "/nvme/cache"),
        (JOB_END_ENV, "1800000000"),
        (RANK_ENV, " 3 "),
        (NODE_ENV, ""),
        (EXIT_WITH_PID_ENV, "not a pid"),
    ]);
    let lookup = |name: &str| env.get(name).map(|v| (*v).to_owned());
    let from_env = WorkerArgs::parse(Vec::<String>::new(), lookup).unwrap();
    assert_eq!(from_env.address.as_deref(), Some("10.0.0.9"));
    assert_eq!(from_env.port, Some(7000));
    assert_eq!(from_env.state_dir, Some("/home/me/.flotilla".into()));
    assert_eq!(from_env.objects_dir, Some("/objects".into()));
    assert_eq!(from_env.cache_dir, Some("/nvme/cache".into()));
    assert_eq!(from_env.job_end, Some(1_800_000_000));
    assert_eq!(from_env.rank, Some(3));
    assert_eq!(from_env.node, None, "empty is unset");
    assert_eq!(from_env.exit_with_pid, None);
    let given = WorkerArgs::parse(
        [
            "--address",
            "h1",
            "--port=9",
            "--objects-dir",
            "/o",
            "--cache-dir",
            "/c",
            "--job-end",
            "5",
        ],
        lookup,
    )
    .unwrap();
    assert_eq!(given.address.as_deref(), Some("h1"));
    assert_eq!(given.port, Some(9));
    assert_eq!(given.objects_dir, Some("/o".into()));
    assert_eq!(given.cache_dir, Some("/c".into()));
    assert_eq!(given.job_end, Some(5));
}

#[test]
fn bad_command_lines_say_why() {
    let parse = |argv: &[&str]| WorkerArgs::parse(argv.iter().copied(), no_env).unwrap_err();
    assert_eq!(parse(&["--prot", "9"]), ArgsError::Unknown("--prot".into()));
    assert_eq!(parse(&["extra"]), ArgsError::Unknown("extra".into()));
    assert_eq!(parse(&["--port"]), ArgsError::MissingValue(flag::PORT));
    assert_eq!(
        parse(&["--slots", "1", "--slots", "2"]),
        ArgsError::Repeated(flag::SLOTS)
    );
    assert_eq!(
        parse(&["--accelerators", "0,1", "--accelerators=2,3"]),
        ArgsError::Repeated(flag::ACCELERATORS)
    );
    let bad = parse(&["--port", "70000"]);
    assert_eq!(bad.to_string(), "--port `70000` is not a port");
    assert_eq!(parse(&["--slots", "1", "-h"]), ArgsError::HelpRequested);
    assert_eq!(parse(&["--version"]), ArgsError::VersionRequested);
    let rank = WorkerArgs::parse(Vec::<String>::new(), |name| {
        (name == RANK_ENV).then(|| "first".to_owned())
    })
    .unwrap_err();
    assert!(rank.to_string().contains(RANK_ENV), "{rank}");
}

#[test]
fn every_option_has_a_usage_line_and_parses() {
    for option in USAGE {
        let name = option.flag;
        assert!(name.starts_with("--") && !option.help.is_empty());
        let value = match name {
            flag::PORT
            | flag::BLOCK_ID
            | flag::SLOTS
            | flag::JOB_END
            | flag::MAX_FRAME_BYTES
            | flag::WARM_MEMORY_MB
            | flag::ONNX_THREADS => "1",
            flag::ONNX_SESSION => "worker",
            flag::LOST_DAEMON_EXIT_S | flag::CONNECT_TIMEOUT_S | flag::WALLTIME_MARGIN_S => "1.5",
            _ => "x",
        };
        let parsed = WorkerArgs::parse([name, value], no_env).unwrap();
        assert_ne!(parsed, WorkerArgs::default(), "{name}");
        // An option with a variable falls back to it.
        if let Some(var) = option.env {
            let from_env = WorkerArgs::parse(Vec::<String>::new(), |v| {
                (v == var).then(|| value.to_owned())
            })
            .unwrap();
            assert_ne!(from_env, WorkerArgs::default(), "{var}");
        }
    }
}

#[test]
fn the_contact_file_round_trips() {
    let info = DaemonInfo {
        pid: 12,
        api: "ipc:///tmp/fl/api.sock".into(),
        interchange_address: "10.0.0.1,login1:7000".into(),
        interchange_port: 5555,
        max_frame_bytes: Some(1 << 20),
        shared_dir: Some("/scratch/me/fl shared".into()),
        client_address: None,
        client_port: None,
    };
    let text = info.to_toml().unwrap();
    assert!(text.contains("interchange_port = 5555"), "{text}");
    assert_eq!(DaemonInfo::from_toml(&text).unwrap(), info);
    assert!(DaemonInfo::from_toml("pid = 1").is_err());
    // A file without the frame limit (an older daemon's) still reads.
    let old = text.replace("max_frame_bytes = 1048576\n", "");
    assert_eq!(DaemonInfo::from_toml(&old).unwrap().max_frame_bytes, None);
    // Nor the shared directory: it is then the state directory.
    let old = text.replace("shared_dir = \"/scratch/me/fl shared\"\n", "");
    assert_eq!(DaemonInfo::from_toml(&old).unwrap().shared_dir, None);
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(
        crate::paths::info_file(std::path::Path::new("/s")),
        std::path::Path::new("/s").join(CONTACT_FILE)
    );
}

#[test]
fn onnx_settings_are_checked() {
    let args =
        WorkerArgs::parse(["--onnx-threads", "4", "--onnx-session", "slot"], no_env).unwrap();
    assert_eq!(args.onnx_threads, Some(4));
    assert_eq!(args.onnx_session.as_deref(), Some("slot"));
    for bad in [["--onnx-threads", "0"], ["--onnx-session", "node"]] {
        let e = WorkerArgs::parse(bad, no_env).unwrap_err().to_string();
        assert!(e.contains(bad[0]) && e.contains(bad[1]), "{e}");
    }
    let e = WorkerArgs::parse(Vec::<String>::new(), |v| {
        (v == ONNX_SESSION_ENV).then(|| "everywhere".to_owned())
    })
    .unwrap_err();
    assert!(e.to_string().contains(ONNX_SESSION_ENV), "{e}");
}
