//! Memory cgroups, v1 and v2: finding the controller and reading its files.
