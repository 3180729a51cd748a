//! Submitted inputs checked against a servable's declared input type, as
//! the daemon checks them for servables with `validate_input`: the first
//! byte picks one of the declared types, the rest is the msgpack input.
//! The streaming pass must never accept what the tree-based check refuses.

#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use flotilla_protocol::servable::{TypeSpec, check_input, check_input_by_value, quick_check};
use libfuzzer_sys::fuzz_target;

// Linked for its allocator, which aborts at the frame cap.
use flotilla_fuzz as _;

fn ndarray(dtype: &str, shape: &[i64]) -> TypeSpec {
    TypeSpec::Ndarray {
        dtype: dtype.to_owned(),
        shape: shape.to_vec(),
        description: String::new(),
    }
}

fn list(item: TypeSpec) -> TypeSpec {
    TypeSpec::List {
        item: Box::new(item),
        description: String::new(),
    }
}

/// Every kind of type, nested the ways the examples nest them.
static SPECS: LazyLock<Vec<TypeSpec>> = LazyLock::new(|| {
    let d = String::new;
    let composition = TypeSpec::Dict {
        properties: BTreeMap::from([
            (
                "elements".to_owned(),
                list(TypeSpec::String { description: d() }),
            ),
            (
                "fractions".to_owned(),
                list(TypeSpec::Number { description: d() }),
            ),
            ("count".to_owned(), TypeSpec::Integer { description: d() }),
            ("strict".to_owned(), TypeSpec::Boolean { description: d() }),
        ]),
        description: d(),
    };
    vec![
        TypeSpec::Any { description: d() },
        TypeSpec::Number { description: d() },
        TypeSpec::Integer { description: d() },
        TypeSpec::String { description: d() },
        TypeSpec::Boolean { description: d() },
        TypeSpec::File { description: d() },
        list(TypeSpec::Integer { description: d() }),
        list(list(TypeSpec::Any { description: d() })),
        composition,
        ndarray("float64", &[8, 8]),
        ndarray("uint8", &[-1, 3]),
        ndarray("int32", &[]),
        ndarray("bool", &[2, -1, 2]),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, input)) = data.split_first() else {
        return;
    };
    let spec = &SPECS[usize::from(pick) % SPECS.len()];
    if quick_check::accepts(spec, input) {
        assert_eq!(
            check_input_by_value(spec, input),
            Ok(()),
            "the streaming pass accepted what the tree-based check refuses"
        );
    }
    if let Err(mismatch) = check_input(spec, input) {
        assert!(
            mismatch.path.starts_with("input"),
            "a mismatch names where it is: {mismatch:?}"
        );
    }
});
