//! Inputs for the example servables, the same on every run.

use std::process::Command;

use serde_json::Value;

/// The first `n` (≤ 1797) images of scikit-learn's digits dataset, read with
/// `python3` (the servables' Python environment).
pub fn digit_images(n: usize) -> Result<Vec<Value>, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import json; from sklearn import datasets; \
                 print(json.dumps(datasets.load_digits().images[:{n}].tolist()))"
            ),
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 cannot read the digits dataset (run ./scripts/test.sh to make .venv and put .venv/bin on PATH): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// `n` binary and ternary formulas over the formation-enthalpy example's
/// elements (a fixed pseudo-random sequence).
pub fn formulas(n: usize) -> Vec<Value> {
    const ELEMENTS: &[&str] = &[
        "H", "Li", "Be", "B", "C", "N", "O", "F", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "K",
        "Ca", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
        "Sr", "Zr", "Ag", "Sn", "I", "Ba",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    (0..n)
        .map(|_| {
            let parts = 2 + next(2);
            let mut formula = String::new();
            let mut used = Vec::new();
            while used.len() < parts {
                let e = ELEMENTS[next(ELEMENTS.len())];
                if !used.contains(&e) {
                    used.push(e);
                    let count = 1 + next(4);
                    formula.push_str(e);
                    if count > 1 {
                        formula.push_str(&count.to_string());
                    }
                }
            }
            Value::String(formula)
        })
        .collect()
}
