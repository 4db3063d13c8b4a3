use super::to_remove;

#[test]
fn ages_only_past_three_quarters_and_down_to_half() {
    assert_eq!(to_remove(0, 4096), None);
    assert_eq!(to_remove(3072, 4096), None);
    assert_eq!(to_remove(3073, 4096), Some(3073 - 2048));
    assert_eq!(to_remove(4096, 4096), Some(2048));
}
