#!/usr/bin/env bash
# Mutation testing: each mutant is one edit to a scratch copy of the crate; the tests (and, for
# run-time mutants, the default torture run, and for loom mutants the loom models) must fail.
#
#   scripts/mutants.sh            every mutant
#   scripts/mutants.sh NAME...    only these (see the table below for the names)
#   scripts/mutants.sh --list     the mutants, one line each
#   TORTURE_ONLY=1 scripts/mutants.sh ...   skip cargo test (a quick look at run-time mutants)
#
# A mutant is "killed" when the check fails, "SURVIVED" when it passes. An edit that no longer
# applies (the code moved) is an error: the script says so and exits non-zero, so the table
# cannot silently go stale. The scratch copy lives in target/mutants/src-copy; builds share
# target/mutants/target so each mutant recompiles only what its edit touches. One mutant costs
# about 3 to 5 minutes on 2 cores (the test suite, with the ui cases, then 10 s of torture).
# The results, with the date and commit, go to target/mutants/results.md; docs/reliability.md
# keeps the table of the last full run.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/mutants
copy=$work/src-copy
export CARGO_TARGET_DIR=$work/target
export CARGO_TERM_COLOR=never

# Tab-separated: name, file, perl substitution (applied with perl -0pi, first match only), checks
# checks: t = cargo test --all-features, r = also the default torture run, l = the loom models
# (the edit is a patch in scripts/mutants/, the third column; the file column names what it edits),
# m = the heap backend's tests under Miri (a patch likewise; Miri must report undefined behaviour).
MUTANTS=$(cat <<'EOF'
lock_without_pmd_same	src/provenance/lock.rs	s/match P::recheck_slot\(&pmd\.src\) \{/match P::recheck_slot(&pmd.src).filter(|_| false) {/	tr
free_defer_frees_at_once	src/mmu/backend.rs	s/self\.rcu\.call_rcu\(Box::new\(move \|\| frames\.free_table\(pfn\)\)\);/frames.free_table(pfn);/	tr
map_without_rcu_section	src/provenance/map.rs	s/PteMap::open\(pmd, addr, MapKind::Map, true\)/PteMap::open(pmd, addr, MapKind::Map, false)/	tr
gup_pte_path_without_pmd_recheck	src/ops/gup.rs	s/if !pmd\.still_installed\(\) \|\| map\.ptep_get\(va\) != pte \{/if map.ptep_get(va) != pte {/	tr
gup_huge_path_without_pmd_recheck	src/ops/gup.rs	s/if !pmd\.still_installed\(\) \{(\s*)pins\.unpin\(pin\);/if false {$1pins.unpin(pin);/	tr
retract_without_anon_vma_recheck	src/mmu/khugepaged.rs	s/mmu\.vma_at\(haddr\)\s*\.is_some_and\(\|v\| !v\.anon_vma\.load\(Ordering::Acquire\)\)\s*&&/true \&\&/	t
retract_without_either_anon_check	src/mmu/khugepaged.rs	s/mmu\.vma_at\(haddr\)\s*\.is_some_and\(\|v\| !v\.anon_vma\.load\(Ordering::Acquire\)\)\s*&& !ptl\.entries\(\)\.any\(\|p\| p\.is_present\(\) && p\.is_anon\(\)\)/{ let _ = (mmu, ptl); true }/	tr
gup_without_pte_recheck	src/ops/gup.rs	s/if !pmd\.still_installed\(\) \|\| map\.ptep_get\(va\) != pte \{/if !pmd.still_installed() {/	tr
synchronize_without_wait	src/rcu/epoch.rs	s/(self\.check_not_in_section\("synchronize_rcu"\);\s*)let done = self\.queue_marker\(\);\s*self\.wait_for\(&done, None\);/$1let _ = self.queue_marker();/	tr
retract_without_page_table_check	src/mmu/khugepaged.rs	s/let report = super::check::page_table_check_pte_clear_range\(self, haddr, &table\.pmd\(\)\);/let report = super::check::PtcReport::default();/	tr
reclaim_blocking_pmd_lock_under_pte_lock	src/mmu/zap.rs	s/if let Some\(pml\) = pmd_trylock\(pmd\) \{/if let Some(pml) = Some(pmd_lock(pmd)) {/	tr
move_without_anon_vma_handover	src/mmu/munmap.rs	s/if old_vma\.anon_vma\.load\(Ordering::Acquire\) \{\s*self\.anon_vma_prepare\(&new_vma\);\s*\}//	t
collapse_without_vma_start_write	src/mmu/khugepaged.rs	s/let vw = mm\s*\.vma_start_write_at\(vma\.start, Location::caller\(\)\)\?\s*\.ok_or\(Error::NotInVma \{ addr: va \}\)\?;/let _ = &vma; let vw = &mm;/	t
lock_checker_without_order_rule	src/mmu/lockdep.rs	s/\} else if h\.class > class \{/} else if false {/	t
populate_relaxed_store	src/mmu/backend.rs	s/slot\.0\.store\(table_entry\(table\.pfn\), Ordering::Release\);/slot.0.store(table_entry(table.pfn), Ordering::Relaxed);/	t
loom_free_defer_frees_at_once	src/provenance/detached.rs	loom/free_defer_frees_at_once.patch	l
loom_lock_without_pmd_same	src/provenance/lock.rs	loom/lock_without_pmd_same.patch	l
loom_open_reads_slot_before_rcu	src/provenance/map.rs	loom/open_reads_slot_before_rcu.patch	l
loom_tiny_domain_barrier_without_grace_period	src/rcu/tiny.rs	loom/tiny_domain_barrier_without_grace_period.patch	l
loom_tiny_domain_call_rcu_runs_inline	src/rcu/tiny.rs	loom/tiny_domain_call_rcu_runs_inline.patch	l
loom_tiny_domain_claim_relaxed	src/rcu/tiny.rs	loom/tiny_domain_claim_relaxed.patch	l
loom_tiny_domain_release_slot_relaxed	src/rcu/tiny.rs	loom/tiny_domain_release_slot_relaxed.patch	l
loom_tiny_enter_relaxed_store	src/rcu/tiny.rs	loom/tiny_enter_relaxed_store.patch	l
loom_tiny_read_lock_without_fence	src/rcu/tiny.rs	loom/tiny_read_lock_without_fence.patch	l
loom_tiny_read_unlock_relaxed	src/rcu/tiny.rs	loom/tiny_read_unlock_relaxed.patch	l
loom_tiny_synchronize_relaxed_load	src/rcu/tiny.rs	loom/tiny_synchronize_relaxed_load.patch	l
loom_tiny_synchronize_without_fence	src/rcu/tiny.rs	loom/tiny_synchronize_without_fence.patch	l
miri_heap_free_defer_frees_at_once	src/heap/backend.rs	miri/heap_free_defer_frees_at_once.patch	m
EOF
)

if [[ ${1:-} == --list ]]; then
  echo "$MUTANTS" | cut -f1,2,4
  exit 0
fi

want=" $* "
mkdir -p "$work"
results=$work/results.md
{
  echo "Mutants of $(git rev-parse --short HEAD) ($(date -u +%Y-%m-%d)), scripts/mutants.sh"
  echo
  echo "| mutant | file | cargo test | torture (default run) | loom |"
  echo "|---|---|---|---|---|"
} > "$results"

fresh_copy() {
  rm -rf "$copy"
  mkdir -p "$copy"
  # Everything cargo needs, not the build output. Extracted with fresh times (-m): a file the
  # last mutant changed comes back older than its build, which cargo would take as up to date.
  tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$copy" -xmf -
}

outcome() { if "$@" > "$work/last.log" 2>&1; then echo "SURVIVED"; else echo "killed"; fi; }

status=0
while IFS=$'\t' read -r name file edit checks; do
  [[ -z $name ]] && continue
  [[ $want != "  " && $want != *" $name "* ]] && continue
  fresh_copy
  test_r="-" torture_r="-" loom_r="-"
  if [[ $checks == m ]]; then
    if ! patch -s -d "$copy" -p1 < "$root/scripts/mutants/$edit"; then
      echo "error: $name: the patch no longer applies" >&2
      status=2
      continue
    fi
    miri_r=$(cd "$copy" && MIRIFLAGS="-Zmiri-tree-borrows" CARGO_TARGET_DIR=$work/miri-target \
      outcome cargo +nightly miri test --features heap --test heap_backend)
    grep -q "Undefined Behavior" "$work/last.log" || miri_r="$miri_r (no UB report)"
    loom_r="miri: $miri_r"
  elif [[ $checks == l ]]; then
    if ! patch -s -d "$copy" -p1 < "$root/scripts/mutants/$edit"; then
      echo "error: $name: the patch no longer applies" >&2
      status=2
      continue
    fi
    loom_r=$(cd "$copy" && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
      CARGO_TARGET_DIR=$work/loom-target outcome cargo test --release --test loom_crate)
  else
    cp "$copy/$file" "$work/before.rs"
    perl -0pi -e "$edit" "$copy/$file"
    if cmp -s "$copy/$file" "$work/before.rs"; then
      echo "error: $name: the edit no longer applies to $file" >&2
      status=2
      continue
    fi
    [[ -z ${TORTURE_ONLY:-} ]] && test_r=$(cd "$copy" && outcome cargo test --all-features)
    if [[ $checks == *r* ]]; then
      torture_r=$(cd "$copy" && outcome cargo run --release --example torture -- --no-progress)
      grep -E '^(violations|lost anon|bad tables|lock reports|FAIL)' "$work/last.log" | tr '\n' ';' \
        > "$work/$name.torture"
      [[ -s "$work/$name.torture" ]] && torture_r="$torture_r ($(cat "$work/$name.torture"))"
    fi
  fi
  line="| \`$name\` | \`$file\` | $test_r | $torture_r | $loom_r |"
  echo "$line" | tee -a "$results"
  [[ $line == *SURVIVED* && $name != populate_relaxed_store ]] && status=1
done <<< "$MUTANTS"
echo
cat "$results"
exit $status
