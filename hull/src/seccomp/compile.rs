//! Turns one policy table into BPF with seccompiler: the listed calls are allowed, every other call traps.
//! Shared by the build script, which compiles hull's built-in tables into the binary, and by the unit test
//! that checks those programs against the tables. Trusts its input: the tables are hull's own.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use super::policy::Table;

/// `table` as a BPF program for x86_64, or why seccompiler refused it.
pub fn to_bpf(table: &Table) -> Result<BpfProgram, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _, only) in &table.entries {
        let mut alternatives = Vec::new();
        for alternative in only.iter().flatten() {
            let conditions = alternative
                .iter()
                .map(|arg| {
                    let op = if arg.mask == u32::MAX {
                        SeccompCmpOp::Eq
                    } else {
                        SeccompCmpOp::MaskedEq(u64::from(arg.mask))
                    };
                    SeccompCondition::new(arg.index, SeccompCmpArgLen::Dword, op, u64::from(arg.value))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            alternatives.push(SeccompRule::new(conditions).map_err(|e| err(&e))?);
        }
        rules.insert(*nr, alternatives);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| err(&e))?;
    BpfProgram::try_from(filter).map_err(|e| err(&e))
}
