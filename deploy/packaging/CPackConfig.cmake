# Debian packages of constance, built with `cpack -G DEB` in the build
# directory from the already built binaries:
#
#   constance-agent      constance-agent, its unit, /etc/constance/agent.yaml
#   constance-collector  constance-collector, the constance CLI, its unit,
#                        /etc/constance/catalog.yaml, and in
#                        /usr/lib/constance-collector check-tls (the unit's
#                        refusal to start without certificates) and pki.sh
#
# Each package creates its own system user in postinst and removes it on
# purge. Library dependencies come from dpkg-shlibdeps. Included at the end
# of the top-level CMakeLists.txt; tested by tests/packaging (ctest -L packaging).

set(_constance_pkg_dir ${CMAKE_CURRENT_LIST_DIR})
set(_constance_systemd_dir ${PROJECT_SOURCE_DIR}/deploy/systemd)

# Binaries go to <prefix>/bin, i.e. /usr/bin in the packages
# (CPACK_PACKAGING_INSTALL_PREFIX); units and configs have fixed places.
install(TARGETS constance-agent RUNTIME DESTINATION bin COMPONENT agent)
install(TARGETS constance-collector constance RUNTIME DESTINATION bin COMPONENT collector)

install(FILES ${_constance_systemd_dir}/constance-agent.service
        DESTINATION /lib/systemd/system COMPONENT agent)
install(FILES ${_constance_systemd_dir}/constance-collector.service
        DESTINATION /lib/systemd/system COMPONENT collector)

install(PROGRAMS ${_constance_pkg_dir}/check-tls.sh
         DESTINATION /usr/lib/constance-collector RENAME check-tls COMPONENT collector)
install(PROGRAMS ${PROJECT_SOURCE_DIR}/deploy/pki/pki.sh
         DESTINATION /usr/lib/constance-collector COMPONENT collector)

install(FILES ${_constance_pkg_dir}/agent.yaml
        DESTINATION /etc/constance COMPONENT agent)
install(FILES ${PROJECT_SOURCE_DIR}/deploy/collector/catalog.yaml
        DESTINATION /etc/constance COMPONENT collector)

# Maintainer scripts and conffiles, one set per package.
foreach(_comp agent collector)
  set(COMP ${_comp})
  set(PKG constance-${_comp})
  set(_ctl ${PROJECT_BINARY_DIR}/packaging/${_comp})
  foreach(_script postinst prerm postrm)
    configure_file(${_constance_pkg_dir}/${_script}.in ${_ctl}/${_script} @ONLY
                   FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE
                                    GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  endforeach()
  string(TOUPPER ${_comp} _COMP)
  set(CPACK_DEBIAN_${_COMP}_PACKAGE_CONTROL_EXTRA
      ${_ctl}/postinst ${_ctl}/prerm ${_ctl}/postrm ${_ctl}/conffiles)
endforeach()
file(WRITE ${PROJECT_BINARY_DIR}/packaging/agent/conffiles "/etc/constance/agent.yaml\n")
file(WRITE ${PROJECT_BINARY_DIR}/packaging/collector/conffiles "/etc/constance/catalog.yaml\n")
unset(COMP)
unset(PKG)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME constance)
set(CPACK_PACKAGE_VENDOR "constance")
# A suffix marks rehearsal packages (tests/packaging: "+next", which dpkg
# orders after the release itself).
set(CONSTANCE_PACKAGE_VERSION_SUFFIX "" CACHE STRING "Appended to the packages' version (tests)")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION}${CONSTANCE_PACKAGE_VERSION_SUFFIX})
set(CPACK_PACKAGE_CONTACT "constance maintainers <constance@example.org>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL agent collector)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Keeps the maintainer scripts executable and the control files 0644.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# adduser for postinst/postrm; shlibdeps appends the libraries.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")

set(CPACK_DEBIAN_AGENT_PACKAGE_NAME constance-agent)
set(CPACK_COMPONENT_AGENT_DESCRIPTION
    "constance agent: takes a location's observations and streams them to the collector")
set(CPACK_DEBIAN_COLLECTOR_PACKAGE_NAME constance-collector)
set(CPACK_COMPONENT_COLLECTOR_DESCRIPTION
    "constance collector and CLI: cross-location statistics and findings")

include(CPack)
