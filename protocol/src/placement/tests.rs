use super::*;

fn node(devices: Vec<String>, kind: AcceleratorKind, affinity: &str) -> NodeResources {
    NodeResources {
        devices,
        kind: Some(kind),
        affinity: CpuAffinity::parse(affinity).unwrap(),
    }
}

fn env(slot: &SlotPlacement) -> Vec<(&str, &str)> {
    slot.env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn cores(slot: &SlotPlacement) -> String {
    format_cpu_list(slot.cpus.as_deref().unwrap_or_default())
}

#[test]
fn a_four_gpu_nvidia_node_gives_each_of_four_slots_one_gpu_and_a_quarter_of_the_cores() {
    // Polaris and Perlmutter: 4 NVIDIA A100s, 32 (64) cores.
    let n = node(numbered_devices(4), AcceleratorKind::Nvidia, "block");
    let all: Vec<u32> = (0..32).collect();
    let slots = place(&n, 4, &all).unwrap();
    assert_eq!(slots.len(), 4);
    for (i, slot) in slots.iter().enumerate() {
        let id = i.to_string();
        assert_eq!(env(slot), [("CUDA_VISIBLE_DEVICES", id.as_str())]);
        assert_eq!(slot.devices, std::slice::from_ref(&id));
        let first = i as u32 * 8;
        assert_eq!(cores(slot), format!("{first}-{}", first + 7));
    }
    // Alternating cores: slot 1 takes 1, 5, 9, …
    let n = node(numbered_devices(4), AcceleratorKind::Nvidia, "alternating");
    let slots = place(&n, 4, &all).unwrap();
    assert_eq!(slots[1].cpus.as_deref().unwrap()[..3], [1, 5, 9]);
}

#[test]
fn an_eight_gcd_amd_node_gives_each_slot_one_gcd_through_rocr() {
    // Frontier: 4 MI250X, 8 GCDs, 56 usable cores (one per L3 region
    // reserved: 0, 8, 16, …).
    let n = node(
        numbered_devices(8),
        AcceleratorKind::Amd,
        "list:1-7:9-15:17-23:25-31:33-39:41-47:49-55:57-63",
    );
    let all: Vec<u32> = (0..64).collect();
    let slots = place(&n, 8, &all).unwrap();
    assert_eq!(slots.len(), 8);
    for (i, slot) in slots.iter().enumerate() {
        let id = i.to_string();
        assert_eq!(
            env(slot),
            [
                ("ROCR_VISIBLE_DEVICES", id.as_str()),
                ("HIP_VISIBLE_DEVICES", "0")
            ]
        );
        let first = i as u32 * 8 + 1;
        assert_eq!(cores(slot), format!("{first}-{}", first + 6));
    }
    // Two GCDs per slot: HIP numbers them 0 and 1.
    let slots = place(
        &node(numbered_devices(8), AcceleratorKind::Amd, "none"),
        4,
        &all,
    )
    .unwrap();
    assert_eq!(
        env(&slots[3]),
        [
            ("ROCR_VISIBLE_DEVICES", "6,7"),
            ("HIP_VISIBLE_DEVICES", "0,1")
        ]
    );
    assert_eq!(slots[3].cpus, None);
}

#[test]
fn a_twelve_tile_intel_node_gives_each_slot_a_tile_and_skips_the_reserved_cores() {
    // Aurora: 6 GPUs of 2 tiles, 2 sockets of 52 cores, 0 and 52 reserved.
    let tiles: Vec<String> = (0..6)
        .flat_map(|g| (0..2).map(move |t| format!("{g}.{t}")))
        .collect();
    let n = node(tiles, AcceleratorKind::Intel, "list:1-51:53-103");
    let all: Vec<u32> = (0..104).collect();
    let slots = place(&n, 12, &all).unwrap();
    assert_eq!(slots.len(), 12);
    assert_eq!(env(&slots[0]), [("ZE_AFFINITY_MASK", "0.0")]);
    assert_eq!(env(&slots[1]), [("ZE_AFFINITY_MASK", "0.1")]);
    assert_eq!(env(&slots[11]), [("ZE_AFFINITY_MASK", "5.1")]);
    // 51 cores per socket for 6 slots: 9, 9, 9, 8, 8, 8; slots 0-5 on the
    // first socket, 6-11 on the second; never core 0 or 52.
    assert_eq!(cores(&slots[0]), "1-9");
    assert_eq!(cores(&slots[5]), "44-51");
    assert_eq!(cores(&slots[6]), "53-61");
    assert_eq!(cores(&slots[11]), "96-103");
    let used: Vec<u32> = slots.iter().flat_map(|s| s.cpus.clone().unwrap()).collect();
    assert_eq!(used.len(), 102);
    assert!(!used.contains(&0) && !used.contains(&52));
    // One list for the whole node: the same cores, in 12 runs.
    let n = node(
        numbered_devices(12),
        AcceleratorKind::Intel,
        "list:1-51,53-103",
    );
    let slots = place(&n, 12, &all).unwrap();
    assert_eq!(cores(&slots[0]), "1-9");
    assert!(slots.iter().all(|s| !s.cpus.as_ref().unwrap().is_empty()));
}

#[test]
fn refusals_say_what_to_change() {
    let all: Vec<u32> = (0..2).collect();
    let four = node(numbered_devices(4), AcceleratorKind::Nvidia, "none");
    let err = place(&four, 3, &all).unwrap_err().to_string();
    assert!(
        err.contains("4 accelerators cannot be shared evenly among 3 slots"),
        "{err}"
    );
    // More slots than accelerators.
    assert!(matches!(
        place(&four, 8, &all),
        Err(PlacementError::Uneven {
            devices: 4,
            slots: 8
        })
    ));
    let no_kind = NodeResources {
        devices: numbered_devices(2),
        kind: None,
        affinity: CpuAffinity::None,
    };
    assert_eq!(place(&no_kind, 2, &all), Err(PlacementError::NoKind));
    // Cores the node lacks are named, with those it has.
    let n = node(vec![], AcceleratorKind::Nvidia, "list:1-51,53-103");
    let err = place(&n, 2, &all).unwrap_err().to_string();
    assert!(err.ends_with(": 2-51,53-103 (it may use 0-1)"), "{err}");
    // Two cores cannot give four slots one each.
    let n = node(vec![], AcceleratorKind::Nvidia, "block");
    let err = place(&n, 4, &all).unwrap_err().to_string();
    assert!(
        err.contains("2 cores (0-1) cannot give each of 4 slots"),
        "{err}"
    );
    for bad in [
        "list:",
        "list:3-1",
        "list:1,1",
        "list:x",
        "blocks",
        "list:0-70000",
    ] {
        assert!(CpuAffinity::parse(bad).is_err(), "{bad}");
    }
    assert!(check_devices(&["0".into(), "0".into()]).is_err());
    assert!(check_devices(&["0,1".into()]).is_err());
}

#[test]
fn two_cores_two_slots_and_no_affinity_without_a_rule() {
    let all = [0, 1];
    let n = node(numbered_devices(2), AcceleratorKind::Nvidia, "block");
    let slots = place(&n, 2, &all).unwrap();
    assert_eq!(slots[0].cpus, Some(vec![0]));
    assert_eq!(slots[1].cpus, Some(vec![1]));
    let plain = place(&NodeResources::default(), 3, &all).unwrap();
    assert_eq!(plain, vec![SlotPlacement::default(); 3]);
}

#[test]
fn affinity_and_core_lists_read_back_as_written() {
    for text in [
        "none",
        "block",
        "alternating",
        "list:1-51,53-103",
        "list:0-3:8,10",
    ] {
        assert_eq!(CpuAffinity::parse(text).unwrap().to_string(), text);
    }
    assert_eq!(parse_cpu_list("3, 0-1").unwrap(), [3, 0, 1]);
    assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    assert_eq!(
        AcceleratorKind::from_name("amd"),
        Some(AcceleratorKind::Amd)
    );
}
