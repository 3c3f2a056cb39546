/*
 * Test driver: compiles groovy/import_wsi_stnuc.groovy and runs its import logic
 * (WsiStnucImport) on real qupath-core objects, without QuPath's GUI.
 *   args: SCRIPT RESULTS_DIR SCENARIO.json
 * SCENARIO: {"images": [{"name", "paths": [...], "existing": GEOJSON or null, "runs": N}]}
 * Prints one JSON document: per image, the log lines and what its hierarchy holds.
 */
import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.hierarchy.PathObjectHierarchy

def loader = new GroovyClassLoader(this.class.classLoader)
loader.parseClass(new File(args[0]))
def imp = loader.loadClass('WsiStnucImport')
def dir = new File(args[1])
def scenario = GsonTools.getInstance().fromJson(new File(args[2]).getText('UTF-8'), Map)
def out = []
for (image in scenario.images) {
    def hierarchy = new PathObjectHierarchy()
    if (image.existing)
        hierarchy.addObjects(PathIO.readObjects(new File(image.existing as String).toPath()))
    def lines = []
    int runs = (image.runs ?: 1) as int
    runs.times { lines << (imp.run(hierarchy, image.name as String, image.paths as List, dir, imp.results(dir)) as String) }
    def detections = hierarchy.getDetectionObjects()
    def colours = [:]
    detections.collect { it.getPathClass() }.findAll { it != null }.unique().each { pc ->
        colours[pc.toString()] = [ColorTools.red(pc.getColor()), ColorTools.green(pc.getColor()), ColorTools.blue(pc.getColor())]
    }
    out << [name: image.name as String, lines: lines, n_objects: hierarchy.nObjects(),
            ids: detections.collect { it.getID().toString() }.sort(),
            tags: detections.collect { String.valueOf(imp.tagOf(it)) }.countBy { it },
            colours: colours]
}
println GsonTools.getInstance().toJson(out)
