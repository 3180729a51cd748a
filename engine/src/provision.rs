//! From the site file to a provider: the channel its commands run on and
//! the scheduler it talks to.

use std::time::Duration;

use flotilla_providers::{
    Channel, CobaltProvider, KubernetesOptions, KubernetesProvider, LocalChannel, LocalProvider,
    ObjectsVolume, PbsProvider, Provider, SchedulerOptions, SlurmProvider, SshChannel, SshConfig,
};

use crate::config::{ChannelKind, Config, ProviderKind};

/// The channel `[channel]` describes.
pub fn channel(config: &Config) -> Box<dyn Channel> {
    let c = &config.channel;
    match c.kind {
        ChannelKind::Local => Box::new(LocalChannel),
        ChannelKind::Ssh => Box::new(SshChannel::new(SshConfig {
            host: c.host.clone(),
            port: c.port,
            user: c
                .user
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "root".into()),
            key_file: c.key_file.clone(),
            known_hosts: c.known_hosts.clone(),
            check_host_key: c.check_host_key,
            connect_timeout: crate::config::duration(c.connect_timeout_s),
        })),
    }
}

/// The provider `[provider]` describes, on its channel.
pub fn provider(config: &Config) -> Box<dyn Provider> {
    let p = &config.provider;
    let timeout = crate::config::duration(p.command_timeout_s);
    let options = SchedulerOptions {
        nodes_per_block: p.nodes_per_block,
        walltime: config.scheduler_walltime(),
        partition: p.partition.clone(),
        queue: p.queue.clone(),
        account: p.account.clone(),
        qos: p.qos.clone(),
        constraint: p.constraint.clone(),
        select_resources: p.select_resources.clone(),
        place: p.place.clone(),
        exclusive: p.exclusive,
        gpus_per_node: p.gpus_per_node,
        scheduler_options: p.scheduler_options.clone(),
    };
    match p.kind {
        ProviderKind::Local => Box::new(
            LocalProvider::default()
                .with_walltime(config.block_walltime_s().map(Duration::from_secs)),
        ),
        ProviderKind::Slurm => Box::new(SlurmProvider::new(channel(config), options, timeout)),
        ProviderKind::Pbspro => Box::new(PbsProvider::new(channel(config), options, timeout)),
        ProviderKind::Cobalt => Box::new(CobaltProvider::new(channel(config), options, timeout)),
        ProviderKind::Kubernetes => {
            let k = &p.kubernetes;
            Box::new(KubernetesProvider::new(
                channel(config),
                KubernetesOptions {
                    namespace: k.namespace.clone(),
                    kubeconfig: k.kubeconfig.clone(),
                    context: k.context.clone(),
                    image: k.image.clone(),
                    image_pull_policy: k.image_pull_policy.clone(),
                    service_account: k.service_account.clone(),
                    pods_per_block: p.nodes_per_block,
                    cpu_request: k.cpu_request.clone(),
                    cpu_limit: k.cpu_limit.clone(),
                    memory_request: k.memory_request.clone(),
                    memory_limit: k.memory_limit.clone(),
                    gpus: k.gpus,
                    node_selector: k.node_selector.clone(),
                    tolerations: k.tolerations.clone(),
                    objects_volume: k
                        .objects_claim
                        .as_ref()
                        .zip(config.worker.objects_dir.as_ref())
                        .map(|(claim, dir)| ObjectsVolume {
                            claim: claim.clone(),
                            mount_path: dir.clone(),
                        }),
                },
                timeout,
            ))
        }
    }
}
