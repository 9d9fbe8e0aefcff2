"""nimbus-kubearmor: reconciles Nimbus NimbusPolicies into KubeArmor KubeArmorPolicies."""
